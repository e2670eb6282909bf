"""Embedded, offline data sets: synthetic person profiles and scikit-learn digits."""
