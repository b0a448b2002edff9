"""The engine: the one step loop behind every front door (validate, group, scalars,
reductions, launch)."""
