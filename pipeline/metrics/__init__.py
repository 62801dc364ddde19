"""Metrics: FID / IS (torch-fidelity), CLIP / SigLIP scores, image statistics."""
