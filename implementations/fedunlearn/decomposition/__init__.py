"""Model-decomposition family: separable parts that can be dropped or retrained alone."""
