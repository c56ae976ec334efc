"""Training: the one loop every variant uses (engine), the variant -> recipe mapping (recipes) and the
verdict on a run's curves (diagnosis)."""
