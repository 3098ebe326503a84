"""Signal propagation at initialization (chapter 13.1 and coding question C2)."""
