"""Batch size and normalization: BN, GN, LN, IN and none across batch sizes, ghost BN and gradient accumulation (chapter 12.5)."""
