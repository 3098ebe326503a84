"""Xavier vs He vs LSUV on a deep plain MLP (chapter 12.1.6; Mishkin & Matas 2016)."""
