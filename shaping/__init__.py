"""FedShape tenant side: spec, traffic models, simulator, baselines (and later agents, enforcement)."""
