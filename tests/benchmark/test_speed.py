"""The speed benchmark runs end to end at tiny size and reports what it measured; no assertion on timing values."""

import json
import re
import sys

import pytest
import torch
from omegaconf import OmegaConf

from direct_nextaccel import cli
from direct_nextaccel.benchmark import speed
from direct_nextaccel.benchmark.results import SCHEMA_VERSION, Result, Row
from direct_nextaccel.benchmark.speed.reconstruction import build_nextaccel
from direct_nextaccel.benchmark.speed.superresolution import build_miar, miar_runner, superresolution_batch
from direct_nextaccel.benchmark.speed.timing import StageClock, summarize

RECONSTRUCTION = speed.TASKS["reconstruction"]
SUPERRESOLUTION = speed.TASKS["superresolution"]
TINY = RECONSTRUCTION.setups["tiny"]
SR_TINY = SUPERRESOLUTION.setups["tiny"]

BATCH_SIZES = (1, 2)
ROW_NAMES = ("argmax", "beam1", "beam2", "beam3", "varnet", "recurrentvarnet")
STAGES = {
    "nextaccel": ["sensitivities", "tokenize", "generate", "decode"],
    "baseline": ["sensitivities", "network"],
}

RESULT_KEYS = ["benchmark", "schema", "started", "task", "environment", "settings", "rows", "ratios", "paper_reference"]
"""Both tasks write one schema (results.Result and the speed keys)."""
SR_ROW_NAMES = ("argmax", "beam1", "beam2", "beam3", "varnet", "recurrentvarnet", "unet")
MIAR_STAGES = ["sensitivities", "lr_image", "lr_encoder", "generate", "decode"]


def test_tiny_benchmark_runs_every_model_and_mode_and_writes_json(tmp_path, capsys):
    output = tmp_path / "results" / "speed.json"
    argv = ["speed", "--config", "tiny", "--device", "cpu", "--repeats", "1", "--warmup", "0", "--no-progress"]
    argv += ["--batch-sizes", *map(str, BATCH_SIZES), "--output", str(output)]
    assert cli.main(argv) == 0
    result = json.loads(output.read_text())

    assert list(result) == RESULT_KEYS and set(Result.__annotations__) <= set(result)
    assert (result["benchmark"], result["schema"], result["task"]) == (
        "direct-nextaccel speed",
        SCHEMA_VERSION,
        "reconstruction",
    )
    assert result["settings"]["config"] == "tiny" and result["environment"]["device_type"] == "cpu"
    assert result["settings"]["coil_source"] is None and result["paper_reference"] is None
    methods = result["settings"]["methods"]
    assert list(methods) == ["aqvae", "nextaccel", "varnet", "recurrentvarnet"]
    assert all(method["run"] is None and method["checkpoint"] is None for method in methods.values())
    assert [(row["method"], row["batch_size"]) for row in result["rows"]] == [
        (name, size) for size in BATCH_SIZES for name in ROW_NAMES[:4]
    ] + [(name, size) for name in ROW_NAMES[4:] for size in BATCH_SIZES]
    for row in result["rows"]:
        assert set(Row.__annotations__) <= set(row) and (row["kind"], row["status"], row["error"]) == (
            "method",
            "ok",
            None,
        )
        quartiles = row["seconds_per_slice_quartiles"]
        assert row["repeats"] == 1 and len(row["seconds_per_slice_samples"]) == 1
        assert row["seconds_per_slice"] == quartiles["median"] > 0 and quartiles["iqr"] == 0.0
        stages = row["stage_seconds_per_slice"]
        assert list(stages) == STAGES["baseline" if row["method"] in ("varnet", "recurrentvarnet") else "nextaccel"]
        assert all(value > 0 for value in stages.values())
        assert sum(stages.values()) == pytest.approx(row["seconds_per_slice"])
        assert row["parameters"] > 0
        if sys.platform == "linux":
            assert row["peak_memory_mib"] > 0

    # Ratios come from this run's medians, every one of them for every batch size.
    medians = {(row["method"], row["batch_size"]): row["seconds_per_slice"] for row in result["rows"]}
    ratios = {(r["numerator"], r["denominator"], r["batch_size"]): r for r in result["ratios"]}
    assert set(ratios) == {(num, den, size) for num, den, _ in RECONSTRUCTION.ratios for size in BATCH_SIZES}
    for (num, den, size), ratio in ratios.items():
        assert ratio["ratio"] == medians[num, size] / medians[den, size]
    assert ratios["beam1", "argmax", 1]["target_at_most"] == 1.7
    assert ratios["argmax", "varnet", 2]["meets_target"] == (ratios["argmax", "varnet", 2]["ratio"] <= 1.0)

    printed = capsys.readouterr().out
    assert "| NextAccel beam k=3 | 2 |" in printed and "| RecurrentVarNet | 1 |" in printed
    assert "| NextAccel beam k=1 / NextAccel argmax | 1 |" in printed
    assert speed.WEIGHTS_NOTE in printed


def test_runs_a_subset_with_bf16_autocast():
    result = speed.benchmark(
        config="tiny", batch_sizes=[1], repeats=1, warmup=0, modes=["beam2"], models=["nextaccel"], bf16=True
    )
    assert [row["method"] for row in result["rows"]] == ["beam2"]
    assert result["ratios"] == [] and set(result["settings"]["methods"]) == {"aqvae", "nextaccel"}
    assert result["settings"]["bf16"] == "NextAccel transformer under bf16 autocast"


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"config": "huge"}, "'huge'"),
        ({"device": "tpu"}, "'tpu'"),
        ({"batch_sizes": [1, 0]}, "batch size 0"),
        ({"batch_sizes": [2, 2]}, "[2, 2]"),
        ({"repeats": 0}, "repeats 0"),
        ({"warmup": -1}, "warmup -1"),
        ({"modes": ["beam4"]}, "'beam4'"),
        ({"models": ["unet"]}, "'unet'"),
        ({"checkpoints": {"miar": None}}, "'miar'"),
    ],
)
def test_bad_options_raise_naming_the_value(options, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        speed.benchmark(**options)


def test_missing_checkpoint_and_config_are_named(tmp_path):
    missing = tmp_path / "model_10.pt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        speed.benchmark(checkpoints={"aqvae": missing})
    with pytest.raises(FileNotFoundError, match="--repo-root"):  # the paper-size configs are not package data
        speed.benchmark(config="paper", models=["varnet"], repo_root=tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of CUDA on a machine without a GPU")
def test_cuda_without_gpu_is_refused():
    with pytest.raises(ValueError, match="'cuda'"):
        speed.benchmark(device="cuda", models=["varnet"])


def test_cli_reports_a_bad_option_in_one_line(capsys):
    assert cli.main(["speed", "--config", "tiny", "--device", "cpu", "--repeats", "0"]) == 2
    assert "repeats 0" in capsys.readouterr().err


def test_direct_checkpoints_are_loaded_and_other_files_refused_naming_them(tmp_path):
    config = speed.resolve_config(TINY.configs["varnet"])
    engine = speed.build_engine(config)
    model_state = {k: torch.full_like(v, 0.5) for k, v in engine.model.state_dict().items()}
    sensitivity = engine.models["sensitivity_model"]
    sensitivity_state = {k: torch.full_like(v, 0.25) for k, v in sensitivity.state_dict().items()}
    torch.save({"model": model_state, "sensitivity_model": sensitivity_state, "iteration": 10}, tmp_path / "direct.pt")
    torch.save(model_state, tmp_path / "bare.pt")

    loaded = speed.build_engine(config, tmp_path / "direct.pt")
    assert all(torch.equal(v, model_state[k]) for k, v in loaded.model.state_dict().items())
    assert all(torch.equal(v, sensitivity_state[k]) for k, v in loaded.models["sensitivity_model"].state_dict().items())
    # The plugin's one checkpoint reader: what DIRECT cannot load either is one line naming the file.
    with pytest.raises(ValueError, match=r"bare\.pt' is not a DIRECT checkpoint: it has no 'model' state dict"):
        speed.build_engine(config, tmp_path / "bare.pt")
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "direct.pt").read_bytes()[:100])
    with pytest.raises(ValueError, match=r"truncated\.pt' cannot be read"):
        speed.build_engine(config, tmp_path / "truncated.pt")
    torch.save({"model": {"layers_list.0.learning_rate": torch.ones(3)}}, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match=r"wrong\.pt"):
        speed.build_engine(config, tmp_path / "wrong.pt")


def test_tiny_configs_are_package_data_and_paper_configs_come_from_the_checkout(tmp_path):
    from direct_nextaccel import resources

    tiny = speed.resolve_config(TINY.configs["aqvae"], repo_root=tmp_path)  # not under tmp_path
    assert tiny == resources.config_path("tiny_aqvae.yaml") and tiny.is_file()
    paper = RECONSTRUCTION.setups["paper"].configs["aqvae"]
    assert speed.resolve_config(paper, repo_root=tmp_path) == tmp_path / paper
    assert speed.resolve_config(paper).is_file()  # this checkout


def test_tiny_nextaccel_is_the_architecture_of_its_config(tmp_path):
    """`speed --config tiny` builds NextAccel from tiny_nextaccel.yaml (not a size of its own), so the checkpoints
    of that config load."""
    import inspect

    from direct_nextaccel.nextaccel.nextaccel import NextAccel

    config_path = speed.resolve_config(TINY.configs["nextaccel"])
    aqvae = speed.build_engine(speed.resolve_config(TINY.configs["aqvae"]))
    model = build_nextaccel(aqvae, config_path)
    yaml = OmegaConf.to_container(OmegaConf.load(config_path).model)
    expected = NextAccel(**{k: v for k, v in yaml.items() if k in inspect.signature(NextAccel).parameters})
    shapes = {k: v.shape for k, v in expected.state_dict().items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes and len(model.blocks) == yaml["depth"]

    state = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in expected.state_dict().items()}
    torch.save({"model": state}, tmp_path / "nextaccel.pt")
    result = speed.benchmark(
        config="tiny",
        batch_sizes=[1],
        repeats=1,
        warmup=0,
        modes=["argmax"],
        models=["nextaccel"],
        checkpoints={"nextaccel": tmp_path / "nextaccel.pt"},
    )
    assert result["settings"]["methods"]["nextaccel"] == {
        "run": None,
        "config": "direct_nextaccel/configs/tiny_nextaccel.yaml",
        "checkpoint": str(tmp_path / "nextaccel.pt"),
    }


def test_a_nextaccel_config_that_does_not_repeat_its_tokenizer_is_refused_naming_the_key(tmp_path):
    config = OmegaConf.load(speed.resolve_config(TINY.configs["nextaccel"]))
    config.model.codebook_size = 32
    OmegaConf.save(config, tmp_path / "nextaccel.yaml")
    aqvae = speed.build_engine(speed.resolve_config(TINY.configs["aqvae"]))
    with pytest.raises(ValueError, match=r"model\.codebook_size 32 differs from the AQ-VAE's 64"):
        build_nextaccel(aqvae, tmp_path / "nextaccel.yaml")


def test_summary_statistics_and_ratio_targets():
    samples = [{"a": 0.5, "b": 0.5}, {"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 2.0}, {"a": 2.0, "b": 2.0}]
    row = summarize("argmax", "NextAccel argmax", 2, samples, None, 10)  # totals per slice 0.5, 1.0, 1.5, 2.0
    assert row["seconds_per_slice"] == pytest.approx(1.25)
    assert row["seconds_per_slice_quartiles"] == pytest.approx(
        {"median": 1.25, "q25": 0.875, "q75": 1.625, "iqr": 0.75}
    )
    assert row["stage_seconds_per_slice"] == pytest.approx({"a": 0.5, "b": 0.75})

    def timed(name, seconds):
        return {"method": name, "batch_size": 1, "seconds_per_slice": seconds}

    ratios = speed.compute_ratios([timed("argmax", 2.0), timed("varnet", 1.0), timed("beam1", 3.0)])
    assert [(r["label"], r["ratio"], r["meets_target"]) for r in ratios] == [
        ("NextAccel argmax / E2EVarNet", 2.0, False),
        ("NextAccel beam k=1 / NextAccel argmax", 1.5, True),
    ]
    assert all("paper_reference" not in r for r in ratios)

    ratios = speed.compute_ratios([timed("argmax", 2.0), timed("unet", 1.0), timed("beam1", 3.0)], "superresolution")
    assert [(r["label"], r["ratio"], r["target_at_most"], r["paper_reference"]) for r in ratios] == [
        ("MIAR argmax / U-Net", 2.0, None, None),
        ("MIAR beam k=1 / MIAR argmax", 1.5, None, 432 / 257),
    ]


# Super-resolution (MIAR) ------------------------------------------------------------------------------------------


def test_tiny_superresolution_runs_miar_and_the_sr_baselines_and_writes_json(tmp_path, capsys):
    output = tmp_path / "speed_sr.json"
    argv = ["speed", "--task", "superresolution", "--config", "tiny", "--device", "cpu", "--repeats", "1"]
    argv += ["--warmup", "0", "--batch-sizes", "1", "--no-progress", "--output", str(output)]
    assert cli.main(argv) == 0
    result = json.loads(output.read_text())

    assert list(result) == RESULT_KEYS and result["task"] == "superresolution"
    settings = result["settings"]
    assert settings["config"] == "tiny" and settings["matrix"] == [64, 64] and settings["coils"] == 4
    assert "--coils 4" in settings["coil_source"]
    assert settings["methods"]["miar"]["config"] == "direct_nextaccel/configs/tiny_miar.yaml"
    assert settings["methods"]["unet"]["config"] == "direct_nextaccel/configs/tiny_sr_unet.yaml"
    assert list(settings["methods"]) == ["msvqvae", "miar", "varnet", "recurrentvarnet", "unet"]
    assert all(method["checkpoint"] is None for method in settings["methods"].values())
    assert [(row["method"], row["label"]) for row in result["rows"]] == [
        (name, SUPERRESOLUTION.labels[name]) for name in SR_ROW_NAMES
    ]
    for row in result["rows"]:
        stages = row["stage_seconds_per_slice"]
        assert list(stages) == (
            MIAR_STAGES if row["method"].startswith(("argmax", "beam")) else ["sensitivities", "network"]
        )
        assert all(value > 0 for value in stages.values())
        assert sum(stages.values()) == pytest.approx(row["seconds_per_slice"])
    # MIAR's row counts its frozen tokenizer (the MSVQ-VAE) with the transformer and LR encoder.
    tokenizer = speed.build_engine(speed.resolve_config("direct_nextaccel/configs/tiny_msvqvae.yaml")).model
    assert result["rows"][0]["parameters"] > sum(p.numel() for p in tokenizer.parameters())

    medians = {row["method"]: row["seconds_per_slice"] for row in result["rows"]}
    ratios = {(r["numerator"], r["denominator"]): r for r in result["ratios"]}
    assert list(ratios) == [(num, den) for num, den, _ in SUPERRESOLUTION.ratios]
    for (num, den), ratio in ratios.items():
        assert ratio["ratio"] == medians[num] / medians[den] and ratio["target_at_most"] is None
    assert ratios["beam1", "argmax"]["paper_reference"] == pytest.approx(1.68, abs=0.005)
    assert ratios["argmax", "unet"]["paper_reference"] is None

    printed = capsys.readouterr().out
    assert "| MIAR beam k=3 | 1 |" in printed and "| U-Net | 1 |" in printed
    assert "| MIAR beam k=1 / MIAR argmax | 1 |" in printed and "| 1.68 (432 / 257 ms) |" in printed
    assert "4 coils (" in printed and speed.WEIGHTS_NOTE in printed


def test_miar_runner_times_the_engines_prediction():
    engine = build_miar(speed.resolve_config(SR_TINY.configs["miar"]), speed.resolve_config(SR_TINY.configs["msvqvae"]))
    batch = superresolution_batch(SR_TINY, 2, torch.device("cpu"))
    assert engine.cfg.model.decoding == "beam" and engine.cfg.model.beam_k == 1
    with torch.inference_mode():
        clock = StageClock(torch.device("cpu"))
        timed = miar_runner(engine, "beam1", bf16=False)(batch, clock)
        data = {**batch, "sensitivity_map": engine.compute_sensitivity_map(batch["sensitivity_map"])}
        predicted, _ = engine.forward_function(data)  # B, H, W, 2
    assert list(clock.stages) == MIAR_STAGES
    assert torch.allclose(timed, torch.linalg.vector_norm(predicted, dim=-1))


def test_miar_is_built_on_the_msvqvae_checkpoint(tmp_path):
    tokenizer = speed.build_engine(speed.resolve_config(SR_TINY.configs["msvqvae"])).model
    state = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in tokenizer.state_dict().items()}
    torch.save({"model": state}, tmp_path / "msvqvae.pt")
    engine = build_miar(
        speed.resolve_config(SR_TINY.configs["miar"]),
        speed.resolve_config(SR_TINY.configs["msvqvae"]),
        tmp_path / "msvqvae.pt",
    )
    assert all(torch.equal(v, state[k]) for k, v in engine.miar.tokenizer.state_dict().items())
    encoder = engine.miar.context_encoder.state_dict()
    assert all(torch.equal(encoder[k], v) for k, v in engine.miar.tokenizer.encoder.state_dict().items())


def test_superresolution_subset_with_bf16_autocast():
    result = speed.benchmark(
        task="superresolution", batch_sizes=[1], repeats=1, warmup=0, modes=["beam2"], models=["miar"], bf16=True
    )
    assert [row["method"] for row in result["rows"]] == ["beam2"]
    assert result["ratios"] == [] and set(result["settings"]["methods"]) == {"msvqvae", "miar"}
    assert result["settings"]["bf16"] == "MIAR transformer under bf16 autocast"


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"task": "inpainting"}, "'inpainting'"),
        ({"task": "superresolution", "models": ["nextaccel"]}, "'nextaccel'"),
        ({"models": ["miar"]}, "'miar'"),
        ({"task": "superresolution", "modes": ["beam4"]}, "'beam4'"),
        ({"task": "superresolution", "modes": []}, "modes is empty"),
        ({"task": "superresolution", "checkpoints": {"aqvae": None}}, "'aqvae'"),
        ({"task": "superresolution", "config": "huge"}, "'huge'"),
    ],
)
def test_bad_superresolution_options_raise_naming_the_value(options, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        speed.benchmark(**options)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--task", "superresolution", "--models", "nextaccel"], "'nextaccel'"),
        (["--task", "superresolution", "--checkpoint-aqvae", "aqvae.pt"], "'aqvae'"),
        (["--checkpoint-unet", "unet.pt"], "'unet'"),
    ],
)
def test_cli_reports_an_option_of_the_other_task_in_one_line(argv, named, capsys):
    assert cli.main(["speed", "--config", "tiny", "--device", "cpu", *argv]) == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1


# Naming models as `direct-nextaccel benchmark` does -----------------------------------------------------------------


def test_run_builds_a_network_from_a_config_and_checkpoint_or_a_run_directory(tmp_path, capsys):
    config = speed.resolve_config(TINY.configs["varnet"])
    engine = speed.build_engine(config)
    state = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in engine.model.state_dict().items()}
    run_dir = tmp_path / "runs" / "varnet"
    run_dir.mkdir(parents=True)
    OmegaConf.save(OmegaConf.load(config), run_dir / "config.yaml")
    for iteration in (3, 10):
        torch.save({"model": state}, run_dir / f"model_{iteration}.pt")

    output = tmp_path / "speed.json"
    argv = ["speed", "--config", "tiny", "--device", "cpu", "--models", "varnet", "--batch-sizes", "1", "--repeats"]
    argv += ["1", "--warmup", "0", "--no-progress", "--output", str(output), "--run", f"varnet={config}:{run_dir}"]
    assert cli.main(argv) == 0
    methods = json.loads(output.read_text())["settings"]["methods"]
    assert methods == {
        "varnet": {"run": f"{config}:{run_dir}", "config": str(config), "checkpoint": str(run_dir / "model_10.pt")}
    }
    assert f"Weights: {run_dir / 'model_10.pt'}." in capsys.readouterr().out

    result = speed.benchmark(models=["varnet"], batch_sizes=[1], repeats=1, warmup=0, runs={"varnet": str(run_dir)})
    assert result["settings"]["methods"]["varnet"]["config"] == str(run_dir / "config.yaml")

    torch.save({"model": {"layers_list.0.learning_rate": torch.ones(3)}}, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match=r"wrong\.pt"):
        speed.benchmark(
            models=["varnet"],
            batch_sizes=[1],
            repeats=1,
            warmup=0,
            runs={"varnet": f"{config}:{tmp_path / 'wrong.pt'}"},
        )


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (
            ["--run", "unet=tiny.yaml:unet.pt"],
            "--run unet=...: NAME is one of aqvae, nextaccel, varnet, recurrentvarnet",
        ),
        (["--run", "varnet=runs/none"], "checkpoint runs/none does not exist"),
        (["--run", "varnet=runs/none", "varnet=runs/other"], "--run varnet is given more than once"),
        (["--run", "varnet=runs/none", "--checkpoint-varnet", "v.pt"], "both with --run and --checkpoint-varnet"),
    ],
)
def test_cli_reports_a_bad_run_in_one_line(argv, named, capsys):
    assert cli.main(["speed", "--config", "tiny", "--device", "cpu", "--models", "varnet", *argv]) == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1


def test_a_run_with_a_family_or_an_unsafe_name_is_a_usage_error(capsys):
    for value in ("varnet@radial=runs/varnet", "../x=runs/varnet"):
        with pytest.raises(SystemExit):
            cli.main(["speed", "--config", "tiny", "--run", value])
    err = capsys.readouterr().err
    assert "takes no @FAMILY" in err and "is not a safe folder name" in err
