"""Evaluation, calibration and fairness reports.

- :mod:`.metrics` — pure numpy metrics: ROC, AUC, EER, TAR@FMR (floored at 1/impostors),
  rank-k, DIR@FPIR, per-group fairness, alignment/uniformity, intra/inter-class angles,
  the 10-fold verification protocol.
- :mod:`.protocols` — verification, identification, hypersphere health and pair
  protocols on labelled embeddings.
- :mod:`.data` — identity folders, metadata CSVs, pair lists (LFW ``pairs.txt``,
  ``a,b,same`` CSV, ``file,identities`` labels CSV).
- :mod:`.embed` and :mod:`.cache` — embedding image files with a ``FaceMatcher``, cached
  on disk by image content hash and model.
- :mod:`.runner` and :mod:`.calibrate` — the ``facematch eval`` / ``facematch calibrate``
  work: numbers, plots (:mod:`.plots`), ``report.json`` and ``report.md``; thresholds
  and the impostor curve written into a model card.
- :mod:`.cli` — the typer commands.

Nothing heavy is imported here.
"""
