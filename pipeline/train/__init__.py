"""One training loop shared by every model, plus small per-model recipes."""
