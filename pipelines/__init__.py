"""The lab's library, laid out by the flow download -> prepare -> train -> evaluate -> embed -> report:
data/, train/, evaluate/, embed/, report/, with tracking/ (MLflow), networks/ and models.py (the
models), gate/ (the CI gate), cli/ (the commands) and the shared modules beside them. README, "Where
the code lives", says what each holds; stages/ runs it under DVC."""
