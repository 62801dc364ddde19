"""One training loop shared by every model, plus small per-model recipes.

- ``config`` (torch-free): ``TrainConfig`` and ``ClipTrainConfig``, also the types of params.yaml's sections;
- ``loop``: ``train(recipe, dataset, cfg, run_dir, seed=..., log_fn=...)``, ``Recipe``,
  ``TrainingInterrupted`` and the exit codes ``EXIT_REQUEUE`` (75, SIGUSR1) / ``EXIT_TERMINATED`` (143);
- ``recipes``: TiTok stage 1 (proxy codes) and stage 2 (decoder fine-tuning), single-stage TiTok, VQGAN;
- ``schedule`` (warm-up + cosine), ``ema``, ``checkpoint`` (atomic, ``weights_only``), ``distributed``
  (torchrun / srun, NCCL / gloo), ``precision`` (autocast).
"""
