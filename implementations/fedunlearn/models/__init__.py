"""Embedded models: a small MLP for digits and a tiny Llama-style causal LM."""
