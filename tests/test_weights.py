import os
import subprocess
import sys
from pathlib import Path

import pytest

from direct_nextaccel.weights import (
    WEIGHT_SPECS,
    WEIGHTS_DIR_ENV,
    find_weight,
    missing_weight_message,
    search_dirs,
    weights_report,
)


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """No weights folder configured and every default cache inside tmp_path."""
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.delenv("TORCH_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"weights")
    return path


def test_nothing_found_without_files(clean_env):
    assert all(find_weight(name) is None for name in WEIGHT_SPECS)
    assert [path for _, _, path in weights_report()] == [None] * len(WEIGHT_SPECS)


def test_search_order_env_then_torch_hub_then_own_cache(clean_env, monkeypatch):
    filename = WEIGHT_SPECS["alexnet"].filename
    own = _touch(clean_env / "cache" / "direct_nextaccel" / "weights" / filename)
    assert find_weight("alexnet") == own

    default_hub = _touch(clean_env / "cache" / "torch" / "hub" / "checkpoints" / filename)
    assert find_weight("alexnet") == default_hub

    monkeypatch.setenv("TORCH_HOME", str(clean_env / "torch_home"))
    torch_home = _touch(clean_env / "torch_home" / "hub" / "checkpoints" / filename)
    assert find_weight("alexnet") == torch_home

    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(clean_env / "mine"))
    mine = _touch(clean_env / "mine" / filename)
    assert find_weight("alexnet") == mine
    assert search_dirs()[0] == clean_env / "mine"


def test_biomedclip_prefers_its_repository_folder(clean_env, monkeypatch):
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(clean_env / "w"))
    bare = _touch(clean_env / "w" / "open_clip_pytorch_model.bin")
    assert find_weight("biomedclip") == bare
    in_repo = _touch(clean_env / "w" / "BiomedCLIP-PubMedBERT_256-vit_base_patch16_224" / "open_clip_pytorch_model.bin")
    assert find_weight("biomedclip") == in_repo


def test_report_lists_every_weight_with_its_path(clean_env, monkeypatch):
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(clean_env / "w"))
    found = _touch(clean_env / "w" / WEIGHT_SPECS["var_vqvae"].filename)
    report = {name: (purpose, path) for name, purpose, path in weights_report()}
    assert set(report) == set(WEIGHT_SPECS)
    assert report["var_vqvae"][1] == found
    assert report["dists"][1] is None
    assert all(purpose for purpose, _ in report.values())


def test_unknown_name_is_refused():
    with pytest.raises(ValueError, match="'resnet'"):
        find_weight("resnet")


def test_missing_message_names_file_and_env_var(clean_env):
    message = missing_weight_message("vgg16")
    assert "vgg16-397923af.pth" in message and WEIGHTS_DIR_ENV in message
    assert "\n" not in message


def test_file_names_are_the_ones_torchvision_and_piq_download():
    from piq import DISTS
    from torchvision.models import AlexNet_Weights, VGG16_Weights

    assert WEIGHT_SPECS["alexnet"].filename == os.path.basename(AlexNet_Weights.IMAGENET1K_V1.url)
    assert WEIGHT_SPECS["vgg16"].filename == os.path.basename(VGG16_Weights.IMAGENET1K_V1.url)
    assert WEIGHT_SPECS["dists"].filename == os.path.basename(DISTS._weights_url)


def test_import_does_not_load_torch():
    code = "import sys, direct_nextaccel.weights; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_a_weights_dir_that_is_missing_or_a_file_is_said(clean_env, monkeypatch, capsys):
    from direct_nextaccel import doctor
    from direct_nextaccel.weights import missing_weight_message, weights_dir_problem

    assert weights_dir_problem() is None
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(clean_env / "nowhere"))
    assert weights_dir_problem() == f"${WEIGHTS_DIR_ENV} is '{clean_env / 'nowhere'}', which does not exist"
    assert missing_weight_message("alexnet").endswith("which does not exist")
    (clean_env / "a_file").write_text("not a folder")
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(clean_env / "a_file"))
    assert "which is a file, not a folder" in weights_dir_problem()
    doctor.run(None)
    assert "WARNING: $DIRECT_NEXTACCEL_WEIGHTS_DIR is" in capsys.readouterr().out
