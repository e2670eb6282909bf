"""Perturbation family: change trained weights directly to remove an influence.

Most methods here share two steps (``forgetting``): the clients holding the forgotten data change
the global model themselves (ascent, projected ascent, a preference loss), then the others repair
it. ``negated_update`` is the family's control (no ``ENTRY``): the forgetting client's ordinary
update, negated, then recovery rounds.
"""
