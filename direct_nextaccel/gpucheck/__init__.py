"""``direct-nextaccel gpu-check``: every engine trained a few iterations in bf16 with DIRECT's own ``direct train``,
``direct predict`` on a couple of slices, then ``speed`` for both tasks, in one command with a time budget (issue 14,
item 7).

Written for one call on a GPU machine (``--tier paper --device cuda``: the paper architectures at 256 x 256, under 8
minutes on one H100/H200); ``--tier tiny --device cpu`` runs the same steps with the tiny configs and is what the
test suite runs. Modules, one seam each:

- :mod:`~direct_nextaccel.gpucheck.plan`: the tiers, the engines and the configs derived from the shipped ones (run
  length, checkpoint and validation cadence, the earlier engines' checkpoints, stand-ins for missing weights).
- :mod:`~direct_nextaccel.gpucheck.data`: the check's own small data set at the tier's matrix, simulated from brain
  volumes when there are any, else from synthetic phantoms.
- :mod:`~direct_nextaccel.gpucheck.children`: the child processes (``direct train`` / ``direct predict`` / ``speed``)
  with a deadline, and what each measures (seconds per iteration, peak memory).
- :mod:`~direct_nextaccel.gpucheck.report`: the summary (JSON and Markdown) and the issue's GPU targets.
- :mod:`~direct_nextaccel.gpucheck.cli`: the command line and the step sequence with its time guard.
"""
