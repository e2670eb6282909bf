"""Perturbation family: change trained weights directly to remove an influence."""
