"""``direct-nextaccel speed``: inference speed of the autoregressive methods next to DIRECT's baselines, one run on
one device (issues 4 and 7).

Two tasks (``--task``), each a :class:`~direct_nextaccel.benchmark.speed.task.Task` with its own methods, configs
and batch; within a task every method reconstructs the same synthetic batch of the form DIRECT's fastMRI transforms
hand to an engine: masked k-space (B, C, H, W, 2), the mask (B, 1, H, W, 1) and the RSS sensitivity estimate
(B, C, H, W, 2). The timed region runs from that batch to the magnitude image (B, H, W); data loading, the transforms
and writing are outside it, as they are the same for every method. Speed does not depend on the weights' values, so
networks are randomly initialised unless weights are given: ``--run NAME=CONFIG.yaml:CHECKPOINT|RUN_DIR`` (the form
of ``direct-nextaccel benchmark --run``) builds network NAME from that run, ``--checkpoint-NAME PT`` loads weights
into the setup's config.

Modules, one seam each:

- :mod:`~direct_nextaccel.benchmark.speed.task`: the :class:`~direct_nextaccel.benchmark.speed.task.Task` and
  :class:`~direct_nextaccel.benchmark.speed.task.Setup` types, where configs are found.
- :mod:`~direct_nextaccel.benchmark.speed.reconstruction`, :mod:`~direct_nextaccel.benchmark.speed.superresolution`:
  the two tasks, each with its setups (``paper``, ``tiny``), batch, the autoregressive method's builder and runner.
- :mod:`~direct_nextaccel.benchmark.speed.models`: what both tasks build the same way (a DIRECT engine with its
  weights, a baseline's runner, the random batch).
- :mod:`~direct_nextaccel.benchmark.speed.timing`: stage clock, peak memory, a row's statistics, the timing loop.
- :mod:`~direct_nextaccel.benchmark.speed.measure`: :func:`benchmark`, the ratios and the result
  (:class:`~direct_nextaccel.benchmark.results.Result`, the schema ``direct-nextaccel benchmark`` writes too).
- :mod:`~direct_nextaccel.benchmark.speed.report`: the Markdown report.
- :mod:`~direct_nextaccel.benchmark.speed.cli`: the command line.

The tiny configs are package data (read through :mod:`direct_nextaccel.resources`, so ``--config tiny`` works from a
wheel as from a checkout); the paper-size configs are read from the checkout named by ``--repo-root``.
"""

from direct_nextaccel.benchmark.speed.measure import TASKS, benchmark, compute_ratios
from direct_nextaccel.benchmark.speed.models import WEIGHTS_NOTE, build_engine, load_checkpoint
from direct_nextaccel.benchmark.speed.report import markdown
from direct_nextaccel.benchmark.speed.task import MODES, resolve_config

__all__ = [
    "MODES",
    "TASKS",
    "WEIGHTS_NOTE",
    "benchmark",
    "build_engine",
    "compute_ratios",
    "load_checkpoint",
    "markdown",
    "resolve_config",
]
