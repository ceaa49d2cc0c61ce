"""``direct-nextaccel gpu-check``: the derived configs, the data, the time guard, the targets and one-line errors here;
the whole tiny tier on CPU end to end (every engine through DIRECT's own ``direct train``/``direct predict``, both
``speed`` tasks) in the slow test, the same code path ``--tier paper --device cuda`` runs on a GPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from omegaconf import OmegaConf

from direct_nextaccel import cli
from direct_nextaccel.gpucheck import children, data, plan, report

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TRAINED = [engine.name for engine in plan.ENGINES]
PREDICTED = [engine.name for engine in plan.ENGINES if engine.predicts]
STEPS = {
    "data",
    "speed_reconstruction",
    "speed_superresolution",
    *(f"train_{name}" for name in TRAINED),
    *(f"predict_{name}" for name in PREDICTED),
}


def test_gpu_check_is_a_subcommand():
    assert "gpu-check" in cli.SUBCOMMANDS
    args = cli.build_parser().parse_args(["gpu-check", "--tier", "tiny", "--device", "cpu"])
    assert args.tier == "tiny" and args.device == "cpu" and args.budget_minutes == 8.0


def test_every_engine_of_the_issue_is_trained_and_the_reconstructing_ones_predict():
    assert TRAINED == ["aqvae", "nextaccel", "teacher", "distill", "varnet", "recurrentvarnet", "msvqvae", "miar"]
    assert "teacher" not in PREDICTED and len(PREDICTED) == 7


@pytest.mark.parametrize("tier", ["paper", "tiny"])
def test_derived_configs_change_only_the_run(tmp_path, tier):
    """Architecture and batch size are the shipped config's; iterations, cadence and upstream checkpoints are set."""
    runs = tmp_path / "runs"
    for engine in plan.ENGINES:
        config, stand_ins = plan.derive_config(engine, plan.TIERS[tier], runs, REPO, iterations=9)
        source = OmegaConf.to_container(OmegaConf.load(plan.config_source(engine, plan.TIERS[tier], REPO)))
        training = config["training"]
        assert training["num_iterations"] == 9
        assert training["checkpointer"]["checkpoint_steps"] == 9 and training["validation_steps"] == 9
        assert config["logging"]["log_interval"] == 1
        assert training["batch_size"] == source["training"]["batch_size"]
        changed = {key for key in source["model"] if source["model"][key] != config["model"][key]}
        allowed = set(engine.checkpoints) | {"discriminator_backbone", "var_init"}
        assert changed <= allowed, (engine.name, changed)
        for key, dependency in engine.checkpoints.items():
            assert config["model"][key] == str(runs / dependency / "model_8.pt")
        if engine.start_from:
            assert training["model_checkpoint"] == str(runs / engine.start_from / "model_8.pt")
        assert config.get("additional_models") == source.get("additional_models")
        if tier == "tiny" or engine.name != "aqvae":
            assert stand_ins == []


def test_missing_weights_get_the_documented_stand_ins(tmp_path, monkeypatch):
    monkeypatch.setenv("DIRECT_NEXTACCEL_WEIGHTS_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "none"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "none"))
    config, stand_ins = plan.derive_config(plan.ENGINES[0], plan.TIERS["paper"], tmp_path, REPO)
    assert len(stand_ins) == 3
    assert config["model"]["discriminator_backbone"] == "vit_random" and config["model"]["var_init"] == "none"
    assert "lpips_loss" not in {loss["function"] for loss in config["training"]["loss"]["losses"]}


def test_phantom_data_in_the_fastmri_layout(tmp_path):
    written = data.write_data(tmp_path, (32, 32), 2, train_slices=3, val_slices=2, brain=None)
    assert written.source == "synthetic phantoms" and (written.train_slices, written.val_slices) == (6, 2)
    files = sorted(written.train.glob("*.h5"))
    assert [path.name.split("_")[2] for path in files] == ["AXT1", "AXT2"]
    with h5py.File(files[0], "r") as file:
        assert file["kspace"].shape == (3, 2, 32, 32) and np.isfinite(file["reconstruction_rss"][()]).all()


def test_sources_are_picked_by_name_then_by_subject_split(tmp_path):
    for name in ("a.npz", "train.npz", "val.npz"):
        (tmp_path / "kit" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "kit" / name).touch()
    assert data.pick_sources(tmp_path / "kit") == (tmp_path / "kit/train.npz", tmp_path / "kit/val.npz")
    split = tmp_path / "split"
    split.mkdir()
    for name in ("tcga_fg_6692_native.npz", "tcga_du_7294_skullstripped.npz"):
        (split / name).touch()
    assert data.pick_sources(split) == (split / "tcga_du_7294_skullstripped.npz", split / "tcga_fg_6692_native.npz")
    assert data.pick_sources(tmp_path / "absent") is None and data.pick_sources(tmp_path / "kit/a.npz") is not None
    (tmp_path / "empty").mkdir()
    assert data.pick_sources(tmp_path / "empty") is None


def test_seconds_per_iteration_leaves_out_the_last_iteration():
    assert children.seconds_per_iteration({5: 1.0, 6: 1.5, 7: 2.5, 8: 9.0}) == (0.75, 2)
    assert children.seconds_per_iteration({5: 1.0, 6: 3.0}) == (None, 0)
    assert children.seconds_per_iteration({}) == (None, 0)


def test_a_child_past_its_deadline_is_stopped(tmp_path):
    start = time.monotonic()
    command = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]
    result = children.run_child(command, tmp_path / "child.log", deadline=time.monotonic() + 1.0)
    assert result.timed_out and result.status is None and time.monotonic() - start < 20
    assert "started" in (tmp_path / "child.log").read_text()


def _summary(tier: str, device_type: str, argmax_s: float, varnet_s: float) -> dict:
    rows = [
        {"method": "argmax", "batch_size": 8, "status": "ok", "seconds_per_slice": argmax_s},
        {"method": "varnet", "batch_size": 8, "status": "ok", "seconds_per_slice": varnet_s},
    ]
    return {"tier": tier, "environment": {"device_type": device_type}, "speed": {"reconstruction": {"rows": rows}}}


def test_targets_are_judged_only_at_paper_size_on_a_gpu():
    met = report.targets(_summary("paper", "cuda", 0.020, 0.030))
    assert [t["verdict"] for t in met] == ["met", "met"] and math.isclose(met[0]["value"], 20.0)
    missed = report.targets(_summary("paper", "cuda", 0.040, 0.030))
    assert [t["verdict"] for t in missed] == ["missed", "missed"]
    assert all(t["verdict"].startswith("not applicable") for t in report.targets(_summary("tiny", "cpu", 0.02, 0.03)))
    unmeasured = report.targets({"tier": "paper", "environment": {"device_type": "cuda"}})
    assert all(t["value"] is None and t["verdict"].startswith("not measured") for t in unmeasured)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("direct-nextaccel gpu-check: error: "), err
    return err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--budget-minutes", "0"], "--budget-minutes"),
        (["--budget-minutes", "nan"], "--budget-minutes"),
        (["--iterations", "7"], "--iterations 7"),
        (["--num-workers", "-1"], "--num-workers"),
        (["--tier", "paper", "--repo-root", "{tmp}"], "no projects/"),
        (["--brain", "{tmp}/absent"], "--brain"),
        (["--output", "{tmp}/file"], "--output"),
    ],
)
def test_unusable_options_are_one_line_errors(tmp_path, capsys, options, message):
    (tmp_path / "file").write_text("")
    options = [option.replace("{tmp}", str(tmp_path)) for option in options]
    code = cli.main(["gpu-check", "--tier", "tiny", "--device", "cpu", "--output", str(tmp_path / "o"), *options])
    assert code == 2 and message in _one_line_error(capsys)


def test_cuda_without_a_gpu_is_refused_up_front(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is available here")
    assert cli.main(["gpu-check", "--tier", "tiny", "--output", str(tmp_path)]) == 2
    assert "--device cuda" in _one_line_error(capsys)


def _check_summary(output: Path) -> dict:
    summary = json.loads((output / "gpu_check.json").read_text())
    assert {step["name"] for step in summary["steps"]} == STEPS
    assert summary["finished"] and summary["environment"]["torch"] and summary["environment"]["device"]
    markdown = (output / "gpu_check.md").read_text()
    assert all(step["label"] in markdown for step in summary["steps"])
    assert (output / "gpu_check_logs.txt").is_file()
    return summary


def test_the_time_guard_skips_every_step_saying_why(tmp_path):
    output = tmp_path / "out"
    options = ["--tier", "tiny", "--device", "cpu", "--budget-minutes", "1e-9", "--output", str(output)]
    assert cli.main(["gpu-check", *options, "--work", str(tmp_path / "work")]) == 1
    summary = _check_summary(output)
    assert all(step["status"] == "skipped" and step["cause"] for step in summary["steps"])
    by_name = {step["name"]: step for step in summary["steps"]}
    assert by_name["data"]["cause"].startswith("time budget")
    assert by_name["train_aqvae"]["cause"] == "needs data, which skipped"
    assert by_name["predict_distill"]["cause"].startswith("needs train_distill")
    assert not (output / "speed_reconstruction.json").exists()


@pytest.mark.slow
def test_tiny_tier_on_cpu_end_to_end(tmp_path):
    """What a GPU session runs with --tier paper --device cuda: every step passes and is measured."""
    (tmp_path / "no_brain").mkdir()  # synthetic phantoms: no dependency on the shared data
    output = tmp_path / "out"
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "OUT")}
    env["OMP_NUM_THREADS"] = "1"
    command = [str(BIN / "direct-nextaccel"), "gpu-check", "--tier", "tiny", "--device", "cpu"]
    command += ["--output", str(output), "--brain", str(tmp_path / "no_brain"), "--budget-minutes", "30"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    logs = (output / "gpu_check_logs.txt").read_text() if (output / "gpu_check_logs.txt").is_file() else ""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + logs[-4000:]
    summary = _check_summary(output)
    assert summary["data"]["reconstruction"].endswith("from synthetic phantoms")
    for step in summary["steps"]:
        assert step["status"] == "passed" and step["cause"] is None, step
        assert isinstance(step["wall_s"], float) and step["wall_s"] > 0
        if step["kind"] == "train":
            assert step["seconds_per_iteration"] > 0 and step["gaps_timed"] >= 1 and step["peak_rss_mib"] > 0
            assert step["checkpoint_mib"] > 0
        if step["kind"] == "predict":
            assert step["prediction_seconds_per_slice"] > 0 and step["slices_predicted"] == 2
    for task in ("reconstruction", "superresolution"):
        rows = summary["speed"][task]["rows"]
        assert rows and all(row["seconds_per_slice"] > 0 for row in rows)
        assert json.loads((output / f"speed_{task}.json").read_text())["rows"] == rows
    assert [target["verdict"] for target in summary["targets"]] == [
        "not measured; not applicable: tier tiny on cpu"
    ] * 2
