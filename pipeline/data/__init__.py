"""Datasets: the procedural demo, ImageNet sources, processing and sharded storage."""
