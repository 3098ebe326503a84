"""BatchNorm before or after the activation, and the bias before BN (chapter 12.4.5)."""
