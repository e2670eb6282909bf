"""The unlearning harness: forget requests, retrain oracle, controls, evaluation, comparison, reports."""
