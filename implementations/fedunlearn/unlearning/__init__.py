"""The unlearning harness: forget requests, retrain oracle, controls, evaluation, benchmark."""
