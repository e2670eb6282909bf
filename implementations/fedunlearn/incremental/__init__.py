"""Incremental-learning (retraining) family: cheaper retraining from the stored history."""
