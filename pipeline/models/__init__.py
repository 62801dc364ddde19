"""Pure PyTorch models: no DVC, MLflow or Snakemake imports here."""
