"""Monte Carlo dropout against the deterministic network (coding question C4)."""
