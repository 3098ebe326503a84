"""Zero and constant initialization, and the symmetry of hidden units (chapter 12.1.2)."""
