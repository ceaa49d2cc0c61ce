"""Every ``direct-nextaccel`` subcommand answers a user's bad input with one line on stderr, never a traceback.

Each case runs the command in this process through :func:`direct_nextaccel.cli.main` and checks: a non-zero exit
status (2 for a usage error, as argparse's own), exactly one line on stderr, that line naming the offending value or
file, and no traceback. Nothing trains, predicts or runs the GPU check: those entry points fail the test if reached.
Failures inside a ``direct train``/``direct predict`` child are a method's or stage's failure (their own tests).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from direct_nextaccel.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "direct_nextaccel" / "configs"
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """The bad (and a few good) inputs the cases name as ``{F}/...``."""
    from direct_nextaccel.demo import write_phantoms

    root = tmp_path_factory.mktemp("inputs")
    (root / "garbage.bin").write_text("hello\n")
    for name in ("garbage.npz", "garbage.npy", "garbage.mat", "garbage.pt"):
        (root / name).write_bytes(b"\x00garbage" * 10)
    (root / "bad.yaml").write_text("model: [unclosed\n")
    (root / "empty.yaml").write_text("")
    for folder in ("empty", "folder.pt", "bad/train", "bad/val", "dirh5/train/x.h5", "dirh5/val/x.h5"):
        (root / folder).mkdir(parents=True)
    for split in ("train", "val"):
        (root / "bad" / split / "file_brain_AXT1_1.h5").write_bytes(b"garbage")
    for split, seed in (("train", 1), ("val", 2)):
        (root / "data" / split).mkdir(parents=True)
        write_phantoms(root / "data" / split, slices=2, size=64, coils=2, seed=seed)
    (root / "trained").mkdir()  # a demo folder whose models were trained on other data
    (root / "trained" / "demo_data.json").write_text('{"digest": "0", "data": "other data"}')
    for split in ("train", "val"):
        (root / "stale" / "data" / split).mkdir(parents=True)  # an earlier version's phantoms where the demo set goes
        write_phantoms(root / "stale" / "data" / split, slices=1, size=32, coils=1, seed=3)
    np.savez(root / "nan.npz", t1=np.full((4, 32, 32), np.nan, np.float32))
    np.savez(root / "objects.npz", t1=np.array([{"a": 1}], dtype=object))
    np.savez(root / "voxels.npz", t1=np.ones((4, 32, 32), np.float32), voxel_size_mm=np.array([0.0, -1.0, np.nan]))
    np.savez(root / "ok.npz", t1=np.random.default_rng(0).random((4, 32, 32)).astype(np.float32))
    np.save(root / "real.npy", np.zeros((2, 8, 8)))
    return root


# (id, argv with {F} for the inputs folder and {C} for the shipped configs, a text stderr must contain[, mark])
CASES = [
    ("no-command", [], "COMMAND"),
    ("unknown-command", ["bogus"], "'bogus'"),
    ("doctor-extra-argument", ["doctor", "extra"], "extra"),
    ("demo-budget-nan", ["demo", "--budget", "nan"], "--budget nan"),
    ("demo-budget-inf", ["demo", "--budget", "inf"], "--budget inf"),
    ("demo-budget-negative", ["demo", "--budget", "-1"], "--budget -1"),
    ("demo-budget-zero", ["demo", "--budget", "0"], "--budget 0"),
    ("demo-budget-huge", ["demo", "--budget", "1e300"], "--budget 1e+300"),
    ("demo-budget-text", ["demo", "--budget", "abc"], "'abc'"),
    ("demo-family-unknown", ["demo", "--family", "bogus"], "'bogus'"),
    ("demo-device-unknown", ["demo", "--device", "tpu"], "'tpu'"),
    ("demo-device-cuda", ["demo", "--device", "cuda"], "--device cuda", NO_GPU),
    ("demo-output-empty", ["demo", "--output", ""], "--output"),
    ("demo-output-file", ["demo", "--output", "{F}/garbage.bin"], "garbage.bin"),
    ("demo-output-under-file", ["demo", "--output", "{F}/garbage.bin/sub"], "garbage.bin/sub"),
    ("demo-data-missing", ["demo", "--data", "{F}/missing"], "missing"),
    ("demo-data-h5-folder", ["demo", "--data", "{F}/dirh5", "--output", "{F}/out/demo"], "x.h5"),
    ("demo-data-other-than-trained", ["demo", "--data", "{F}/data", "--output", "{F}/trained"], "{F}/trained"),
    ("demo-set-other-than-trained", ["demo", "--output", "{F}/trained"], "{F}/trained holds models"),
    ("demo-phantoms-other-than-trained", ["demo", "--phantoms", "--output", "{F}/trained"], "{F}/trained"),
    ("demo-set-folder-holds-other-data", ["demo", "--output", "{F}/stale"], "{F}/stale/data"),
    ("demo-data-and-phantoms", ["demo", "--data", "{F}/data", "--phantoms"], "--phantoms"),
    ("simulate-no-input", ["simulate", "--output", "{F}/out/sim"], "INPUT"),
    ("simulate-input-missing", ["simulate", "{F}/missing.npz", "--output", "{F}/out/sim"], "missing.npz"),
    ("simulate-input-garbage", ["simulate", "{F}/garbage.npz", "--output", "{F}/out/sim"], "garbage.npz"),
    ("simulate-input-objects", ["simulate", "{F}/objects.npz", "--output", "{F}/out/sim"], "objects.npz"),
    ("simulate-input-nan", ["simulate", "{F}/nan.npz", "--output", "{F}/out/sim"], "nan.npz"),
    ("simulate-voxel-size", ["simulate", "{F}/voxels.npz", "--output", "{F}/out/sim"], "voxels.npz"),
    ("simulate-input-folder-empty", ["simulate", "{F}/empty", "--output", "{F}/out/sim"], "empty"),
    ("simulate-output-file", ["simulate", "{F}/ok.npz", "--output", "{F}/garbage.bin"], "garbage.bin"),
    ("simulate-output-under-file", ["simulate", "{F}/ok.npz", "--output", "{F}/garbage.bin/x"], "garbage.bin/x"),
    ("simulate-coils-zero", ["simulate", "{F}/ok.npz", "--output", "{F}/out/sim", "--coils", "0"], "coils 0"),
    ("simulate-matrix-tiny", ["simulate", "{F}/ok.npz", "--output", "{F}/o", "--matrix", "1", "1"], "(1, 1)"),
    ("simulate-seed-negative", ["simulate", "{F}/ok.npz", "--output", "{F}/o", "--seed", "-1"], "--seed -1"),
    (
        "simulate-brain-fraction-nan",
        ["simulate", "{F}/ok.npz", "--output", "{F}/o", "--min-brain-fraction", "nan"],
        "--min-brain-fraction nan",
    ),
    ("simulate-max-slices-zero", ["simulate", "{F}/ok.npz", "--output", "{F}/o", "--max-slices", "0"], "0"),
    ("simulate-contrast-unknown", ["simulate", "{F}/ok.npz", "--output", "{F}/o", "--contrasts", "pd"], "'pd'"),
    ("import-raw-missing", ["import-raw", "{F}/missing.mat", "--output", "{F}/out/raw"], "missing.mat"),
    ("import-raw-garbage-mat", ["import-raw", "{F}/garbage.mat", "--output", "{F}/out/raw"], "garbage.mat"),
    ("import-raw-garbage-npy", ["import-raw", "{F}/garbage.npy", "--output", "{F}/out/raw"], "garbage.npy"),
    ("import-raw-real-npy", ["import-raw", "{F}/real.npy", "--output", "{F}/out/raw"], "real.npy"),
    ("import-raw-other-suffix", ["import-raw", "{F}/garbage.bin", "--output", "{F}/out/raw"], "garbage.bin"),
    ("import-raw-output-file", ["import-raw", "{F}/real.npy", "--output", "{F}/garbage.bin"], "garbage.bin"),
    ("benchmark-no-method", ["benchmark", "--data", "{F}/data/val", "--output", "{F}/out/b"], "--run"),
    *[
        (f"benchmark-{name}", ["benchmark", "--output", "{F}/out/b", "--predictions", "m={F}/empty", *extra], names)
        for name, extra, names in [
            ("data-missing", ["--data", "{F}/missing"], "missing"),
            ("data-garbage-h5", ["--data", "{F}/bad/val"], "file_brain_AXT1_1.h5"),
            ("acceleration-3", ["--data", "{F}/data/val", "--acceleration", "3"], "--acceleration 3"),
            ("acceleration-0", ["--data", "{F}/data/val", "--acceleration", "0"], "--acceleration 0"),
            ("acceleration-nan", ["--data", "{F}/data/val", "--acceleration", "nan"], "'nan'"),
            ("device-unknown", ["--data", "{F}/data/val", "--device", "tpu"], "'tpu'"),
            ("family-unknown", ["--data", "{F}/data/val", "--family", "bogus"], "'bogus'"),
            ("metric-unknown", ["--data", "{F}/data/val", "--metrics", "bogus"], "'bogus'"),
            ("contrast-unknown", ["--data", "{F}/data/val", "--contrasts", "PD"], "'PD'"),
            ("figure-slice", ["--data", "{F}/data/val", "--figure-slice", "999"], "999"),
            ("zoom-box", ["--data", "{F}/data/val", "--zoom-box", "-1", "0", "10", "10"], "(-1, 0, 10, 10)"),
            ("weights-dir", ["--data", "{F}/data/val", "--weights-dir", "{F}/missing"], "missing"),
            ("training-root", ["--data", "{F}/data/val", "--training-root", "{F}/bad/train"], "file_brain_AXT1_1.h5"),
            ("output-file", ["--data", "{F}/data/val", "--output", "{F}/garbage.bin"], "garbage.bin"),
            ("output-under-file", ["--data", "{F}/data/val", "--output", "{F}/garbage.bin/b"], "garbage.bin/b"),
            ("duplicate-name", ["--data", "{F}/data/val", "--predictions", "m={F}/empty"], "'m'"),
            ("unsafe-name", ["--data", "{F}/data/val", "--predictions", "..={F}/empty"], "'..'"),
            ("not-named", ["--data", "{F}/data/val", "--predictions", "noequals"], "noequals"),
            ("family-of-name", ["--data", "{F}/data/val", "--predictions", "n@bogus={F}/empty"], "'bogus'"),
        ]
    ],
    *[
        (f"speed-{name}", ["speed", "--config", "tiny", "--no-progress", *extra], names)
        for name, extra, names in [
            ("batch-size-zero", ["--batch-sizes", "0"], "batch size 0"),
            ("batch-size-nan", ["--batch-sizes", "nan"], "'nan'"),
            ("repeats-zero", ["--repeats", "0"], "repeats 0"),
            ("warmup-negative", ["--warmup", "-1"], "warmup -1"),
            ("model-of-other-task", ["--task", "superresolution", "--models", "nextaccel"], "'nextaccel'"),
            ("checkpoint-missing", ["--checkpoint-nextaccel", "{F}/missing.pt"], "missing.pt"),
            ("checkpoint-folder", ["--checkpoint-nextaccel", "{F}/folder.pt"], "folder.pt"),
            ("run-missing", ["--run", "nextaccel={F}/missing"], "missing"),
            ("run-bad-yaml", ["--run", "nextaccel={F}/bad.yaml:{F}/garbage.pt"], "bad.yaml"),
            ("run-empty-yaml", ["--run", "nextaccel={F}/empty.yaml:{F}/garbage.pt"], "empty.yaml"),
            ("run-other-model", ["--run", "nextaccel={C}/tiny_varnet_cartesian_y.yaml:{F}/garbage.pt"], "varnet"),
            ("run-unknown-name", ["--run", "bogus={C}/tiny_nextaccel.yaml:{F}/garbage.pt"], "bogus"),
            ("output-folder", ["--output", "{F}/empty"], "empty"),
            ("output-under-file", ["--output", "{F}/garbage.bin/x.json"], "garbage.bin/x.json"),
            ("repo-root-missing", ["--config", "paper", "--repo-root", "{F}/missing"], "missing"),
        ]
    ],
    ("speed-device-cuda", ["speed", "--config", "tiny", "--device", "cuda"], "cuda", NO_GPU),
    *[
        (f"gpu-check-{name}", ["gpu-check", "--device", "cpu", "--tier", "tiny", "--output", "{F}/out/gc", *extra], n)
        for name, extra, n in [
            ("budget-nan", ["--budget-minutes", "nan"], "--budget-minutes nan"),
            ("budget-zero", ["--budget-minutes", "0"], "--budget-minutes 0"),
            ("iterations-few", ["--iterations", "7"], "--iterations 7"),
            ("workers-negative", ["--num-workers", "-1"], "--num-workers -1"),
            ("workers-too-many", ["--num-workers", "100000"], "--num-workers 100000"),
            ("tier-unknown", ["--tier", "bogus"], "'bogus'"),
            ("output-file", ["--output", "{F}/garbage.bin"], "garbage.bin"),
            ("work-file", ["--work", "{F}/garbage.bin"], "garbage.bin"),
            ("brain-missing", ["--brain", "{F}/missing"], "missing"),
            ("brain-not-npz", ["--brain", "{F}/garbage.bin"], "garbage.bin"),
            ("brain-garbage", ["--brain", "{F}/garbage.npz"], "garbage.npz"),
            ("repo-root-without-projects", ["--tier", "paper", "--repo-root", "{F}/empty"], "empty"),
        ]
    ],
    ("gpu-check-device-cuda", ["gpu-check", "--device", "cuda"], "--device cuda", NO_GPU),
]


@pytest.fixture
def nothing_runs(monkeypatch, tmp_path):
    """Training, prediction and the GPU check fail the test if a case reaches them; a path that slipped through as
    ``.`` would write into an empty working folder."""
    from direct_nextaccel import pipeline
    from direct_nextaccel.benchmark.quality import prediction
    from direct_nextaccel.gpucheck import cli as gpucheck_cli

    def reached(*args, **kwargs):
        raise AssertionError("the bad input was not refused before the work started")

    monkeypatch.setattr(pipeline, "train_stage", reached)
    monkeypatch.setattr(prediction, "run_direct_predict", reached)
    monkeypatch.setattr(gpucheck_cli.Check, "run", reached)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("argv, names", [pytest.param(*case[1:3], id=case[0], marks=case[3:]) for case in CASES])
def test_bad_input_is_one_line_naming_it(argv, names, files, nothing_runs, capsys):
    argv = [arg.replace("{F}", str(files)).replace("{C}", str(CONFIGS)) for arg in argv]
    names = names.replace("{F}", str(files))
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert status not in (0, None), err
    assert len(lines) == 1, err
    assert names in lines[0], lines[0]
    assert lines[0].startswith("direct-nextaccel"), lines[0]
