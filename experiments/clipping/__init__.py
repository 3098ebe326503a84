"""Gradient clipping by value against by global norm, step by step (chapter 12.7)."""
