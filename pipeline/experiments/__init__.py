"""Experiments: token manipulation, test-time token optimisation, ALIT analyses."""
