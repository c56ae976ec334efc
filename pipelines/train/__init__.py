"""The train stage: its body (stage.py), the setup the variant stages share (setup.py), the SVM head (svm.py)."""
