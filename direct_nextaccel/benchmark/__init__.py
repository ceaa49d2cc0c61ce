"""Benchmarks that compare the reconstruction methods outside the test suite: image quality and inference speed.

- :mod:`~direct_nextaccel.benchmark.quality` (``direct-nextaccel benchmark``): ``direct predict`` of every method,
  scored per contrast and mask family against the same targets.
- :mod:`~direct_nextaccel.benchmark.speed` (``direct-nextaccel speed``): the inference path of every method timed per
  stage on one device.
- Shared by both: :mod:`~direct_nextaccel.benchmark.naming` (a model is ``--run NAME=CONFIG.yaml:CHECKPOINT`` or
  ``NAME=RUN_DIR`` in both commands) and :mod:`~direct_nextaccel.benchmark.results` (the one JSON result schema).
- The quality benchmark's tables, figures and memorisation diagnostic: :mod:`~direct_nextaccel.benchmark.report`,
  :mod:`~direct_nextaccel.benchmark.figures`, :mod:`~direct_nextaccel.benchmark.memorisation`.
"""
