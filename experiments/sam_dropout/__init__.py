"""SAM against SGD + weight decay, each with and without dropout (the chapter's ★R2)."""
