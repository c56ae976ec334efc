# The two commands of the README: `make run` (main job) and `make test` (tests).
# Both install what they need first, so they work on a fresh machine of this kind.
PY ?= python3
PROTOCOL ?= auto

.PHONY: setup run test ui benchmark

setup:
	bash .ci/setup

run: setup
	DVC_NO_ANALYTICS=1 $(PY) -m pipelines.main --protocol $(PROTOCOL)

test: setup
	DVC_NO_ANALYTICS=1 $(PY) -m pytest -q

ui:
	$(PY) -m mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000
