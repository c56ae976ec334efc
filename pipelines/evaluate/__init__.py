"""The evaluate stage: per-class metrics, confusion matrices and test predictions of a trained variant."""
