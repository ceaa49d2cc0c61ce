"""``direct-nextaccel benchmark``: score DIRECT models on the same fastMRI targets, per contrast and mask family, as
in the paper's Tables 1-2 and Figures 6-8 (section 5.1-5.2).

Methods are DIRECT runs (``--run NAME=CONFIG.yaml:CHECKPOINT`` or ``NAME=RUN_DIR``, any DIRECT model, the plugin's or
a built-in one, named as :mod:`direct_nextaccel.benchmark.naming` says, as ``direct-nextaccel speed --run`` names its
networks), which the benchmark reconstructs with ``direct predict``, folders of existing ``direct predict`` outputs
(``--predictions NAME=DIR``), or a tokenizer's ceiling (``--bound``). A NAME is a safe folder name: it names
``predictions/<NAME>/``.

Modules, one seam each:

- :mod:`~direct_nextaccel.benchmark.quality.methods`: the rows as given (``--run``, ``--predictions``, ``--bound``),
  a tokenizer bound expanded into its rows.
- :mod:`~direct_nextaccel.benchmark.quality.prediction`: a row's family and predictions: ``direct predict`` in a child
  process, timed by DIRECT's own clock, with its peak memory.
- :mod:`~direct_nextaccel.benchmark.quality.scoring`: the volumes and targets, the zero-filled reference, every
  prediction scored per volume and contrast, flat slices, memorisation, one table per family.
- :mod:`~direct_nextaccel.benchmark.quality.benchmark`: :func:`run_benchmark`, the whole benchmark as a function
  (reports, figures).
- :mod:`~direct_nextaccel.benchmark.quality.cli`: the command line.

The tables are laid out by :mod:`direct_nextaccel.benchmark.report` (Markdown, CSV, and ``benchmark.json``: a
:class:`~direct_nextaccel.benchmark.results.Result`, the schema ``speed`` writes too) and drawn by
:mod:`direct_nextaccel.benchmark.figures`: one slice per family (``--figure-volume``, ``--figure-slice``,
``--zoom-box``), with an uncertainty column for each model whose prediction files hold an ``uncertainty`` dataset.

A method that fails (run directory without checkpoint, model that cannot be built, crashing predict, missing,
unreadable or mis-shaped predictions) keeps its row with a one-line reason naming the file; the other rows are
complete. An unreadable data or training file stops the benchmark with one line naming it. Outputs in ``--output``:
``benchmark.md``, ``benchmark.csv``, ``benchmark.json``, ``figure_<family>.png``, ``predictions/<NAME>/`` and
``configs/`` (bound rows).
"""

from direct_nextaccel.benchmark.naming import check_name, resolve_run
from direct_nextaccel.benchmark.quality.benchmark import BenchmarkResult, FigureRequest, run_benchmark
from direct_nextaccel.benchmark.quality.methods import Method, expand_bound, parse_method
from direct_nextaccel.benchmark.quality.prediction import PredictStats, inference_masking, run_direct_predict
from direct_nextaccel.benchmark.quality.scoring import CONTRASTS, ZERO_FILLED, find_volumes

__all__ = [
    "CONTRASTS",
    "ZERO_FILLED",
    "BenchmarkResult",
    "FigureRequest",
    "Method",
    "PredictStats",
    "check_name",
    "expand_bound",
    "find_volumes",
    "inference_masking",
    "parse_method",
    "resolve_run",
    "run_benchmark",
    "run_direct_predict",
]
