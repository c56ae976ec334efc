"""Training: the train stage's body (stage), the setup the variant stages share (setup), the one loop
every variant uses (engine), the variant -> recipe mapping (recipes), the SVM head (svm) and the verdict on
a run's curves (diagnosis)."""
