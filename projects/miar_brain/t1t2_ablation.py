"""Does the T1 reference help MIAR? Two MIAR runs that differ only in ``model.reference_contrast``, then one benchmark.

Both runs start from the same trained MSVQ-VAE checkpoint, read the same samples (the AXT2 slices of the
``FastMRIReference`` dataset, which attaches the AXT1 slice; the single-contrast run ignores it), train for the same
iterations with the same seed, and are scored on the same held-out T2 volumes with argmax and beam k = 1 decoding,
next to the zero-padding reference::

    python projects/miar_brain/t1t2_ablation.py --data DATA --tokenizer runs/MSVQ-VAE/model_1439.pt \
        --iterations 1440 --output results/t1t2

``DATA`` has ``train/`` and ``val/`` with AXT1 and AXT2 files of the same subjects (``direct-nextaccel simulate``);
the tokenizer is the MSVQ-VAE of ``direct_nextaccel/configs/tiny_msvqvae.yaml`` (for example the one
``direct-nextaccel demo --task superresolution`` trains). Finished runs are reused when rerun, as in the demo.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from direct_nextaccel import pipeline

RUNS = {"MIAR-T2": False, "MIAR-T1toT2": True}  # run name -> model.reference_contrast
DECODINGS = {"argmax": {"decoding": "argmax"}, "beam1": {"decoding": "beam", "beam_k": 1}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with train/ and val/ fastMRI-layout files")
    parser.add_argument("--tokenizer", type=Path, required=True, help="MSVQ-VAE checkpoint (tiny_msvqvae shape)")
    parser.add_argument("--iterations", type=int, default=1440, help="MIAR training iterations of each run")
    parser.add_argument("--output", type=Path, default=Path("t1t2_ablation"))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if not args.tokenizer.is_file():
        print(f"t1t2_ablation: no tokenizer checkpoint {args.tokenizer}", file=sys.stderr)
        return 2
    if args.iterations < 6:
        print(f"t1t2_ablation: --iterations {args.iterations} is below DIRECT's minimum of 6", file=sys.stderr)
        return 2

    from direct_nextaccel.benchmark.quality import FigureRequest, Method, run_benchmark

    data = {"train": args.data / "train", "val": args.data / "val"}
    runs = args.output.resolve() / "runs"
    stage = pipeline.Stage("MIAR-T1toT2", "tiny_miar_t1t2.yaml", args.iterations)
    methods = []
    for name, reference in RUNS.items():
        config = pipeline.stage_config(stage, None, 1.0, runs, (stage,))
        config["model"].update(tokenizer_checkpoint=str(args.tokenizer.resolve()), reference_contrast=reference)
        run_stage = pipeline.Stage(name, stage.config, args.iterations)
        checkpoint = pipeline.train_stage(run_stage, config, data, runs, args.device)
        for decoding, overrides in DECODINGS.items():
            path = pipeline.write_variant(runs / name / "demo_config.yaml", decoding, overrides)
            methods.append(Method(f"{name}-{decoding}", None, run=f"{path}:{checkpoint}"))
    run_benchmark(
        data["val"],
        methods,
        args.output.resolve() / "benchmark",
        contrasts=("T2",),  # the FastMRIReference samples: only the T2 files are reconstructed
        device=args.device,
        figure=FigureRequest(),
    )
    print((args.output / "benchmark" / "benchmark.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
