"""Depth and residual connections: plain CNNs against ResNets with He + BN, zero-γ, Fixup, SkipInit and no norm (★R1)."""
