"""The reviewer's report: every reproduced number beside the paper's, the figures, and their provenance.

- :mod:`~pipeline.report.references`: the schema of ``references/paper_numbers.yaml`` (the paper numbers,
  where each is measured and when it is comparable; the demo's ground-truth checks), validated as
  params.yaml is;
- :mod:`~pipeline.report.evaluate`: :func:`~pipeline.report.evaluate.build` collects everything into one
  JSON-ready dict (``report.json``), :func:`~pipeline.report.evaluate.summary` the DVC metrics;
- :mod:`~pipeline.report.render`: the sections of the report, laid out once from report.json;
- :mod:`~pipeline.report.document`: the small document model and its markdown and HTML emitters.

``python -m pipeline report`` (:mod:`pipeline.stages.report`) writes them, and ``python -m pipeline.verify``
(:mod:`pipeline.verify`) checks a finished checkout against them.

What drives the report:

- ``dvc.yaml`` (with ``${...}`` resolved from params.yaml): the outputs, metrics and plots per stage;
- ``dvc.lock`` (:func:`pipeline.dvcfile.read_lock`): the md5 of every cited output. The lock's own hash
  is the sha256 of its canonical JSON *without the report stage's entry*: DVC rewrites that entry after
  the report has run, so the raw file can never match a hash written by the report, and citing it would
  make the report depend on its previous run;
- MLflow (:func:`pipeline.tracking.runs_matching_lock`): per stage, the newest finished run whose
  ``dvc.md5.<path>`` tags equal dvc.lock's md5 for every file output: run id, wall time (metric
  ``seconds``), host; "not recorded" when there is no tracking store.

Nothing here depends on the clock: given the same inputs and provenance the outputs are identical.
"""
