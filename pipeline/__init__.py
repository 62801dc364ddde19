"""Reproducibility pipeline for 1D image tokenizers."""
