"""L1 vs L2 vs elastic net on a sparse linear problem (coding question C3)."""
