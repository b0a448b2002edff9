"""How params, grads and state are stored and handed to a backend: the storage policy, array
kinds, groups, the multi-tensor launch table and the per-step scalar rows."""
