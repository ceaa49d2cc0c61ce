"""The plugin mechanism: entry-point aliases, masks, losses and datasets reach DIRECT in every kind of install."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SITE_PACKAGES = sysconfig.get_paths()["purelib"]


def run_python(code: str, *args: str, cwd: Path, env_extra: dict | None = None, python: str = sys.executable):
    """Run ``code`` in a fresh interpreter (so ``.pth`` processing is real) and return the completed process."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(env_extra or {})
    return subprocess.run(
        [python, *args, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )


def test_alias_is_the_plugin_package_itself(tmp_path):
    result = run_python(
        """
        import sys
        import direct.nn.nextaccel as alias
        import direct_nextaccel.nextaccel as real
        assert alias is real, (alias, real)
        assert sys.modules["direct.nn.nextaccel"] is real
        assert real.__spec__.name == "direct_nextaccel.nextaccel"
        print("ok")
        """,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_editable_install_hook_runs_at_interpreter_start(tmp_path):
    result = run_python(
        """
        import sys
        from direct_nextaccel._hook import _FINDER
        assert _FINDER in sys.meta_path
        import direct_nextaccel
        print(direct_nextaccel.__file__)
        """,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr


def test_register_without_pth_processing(tmp_path):
    """``python -S`` skips site and .pth files: direct.nn.nextaccel is unknown until register() is called."""
    code = f"""
        import sys
        sys.path[:0] = [{SITE_PACKAGES!r}, {str(REPO)!r}]
        try:
            import direct.nn.nextaccel
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit("alias resolved without the hook")
        import direct_nextaccel
        direct_nextaccel.register()
        direct_nextaccel.register()
        import direct.nn.nextaccel
        from direct.common.subsample import build_masking_function
        print(type(build_masking_function("NestedCartesianY", accelerations=[32])).__name__)
        """
    result = run_python(code, "-S", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "NestedCartesianYMaskFunc"


def _fake_distribution(root: Path, entry_points: str, packages: dict[str, str]) -> None:
    """Write an installed-looking distribution (dist-info + modules) into ``root``."""
    dist_info = root / "fakeplugin-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplugin\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for relative, source in packages.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))


def test_third_party_alias_and_refused_shadowing(tmp_path):
    _fake_distribution(
        tmp_path / "site",
        """
        [direct.plugins]
        myplug = myplugpkg
        varnet = myplugpkg
        Upper = myplugpkg

        [direct.mask_functions]
        Radial = myplugpkg.masks:RadialMaskFunc
        """,
        {
            "myplugpkg/__init__.py": "",
            "myplugpkg/config.py": "VALUE = 42\n",
            "myplugpkg/masks.py": "class RadialMaskFunc:\n    pass\n",
        },
    )
    result = run_python(
        """
        import warnings
        warnings.simplefilter("always")
        import direct.nn.myplug.config as aliased
        import myplugpkg.config as real
        assert aliased is real and aliased.VALUE == 42
        import direct.nn.varnet.varnet as builtin
        assert builtin.__file__.endswith("direct/nn/varnet/varnet.py"), builtin.__file__
        from direct.common.subsample import RadialMaskFunc
        assert RadialMaskFunc.__module__ == "direct.common.subsample"
        from direct_nextaccel._hook import REGISTRY
        print("\\n".join(REGISTRY.refused))
        """,
        cwd=tmp_path,
        env_extra={"PYTHONPATH": str(tmp_path / "site")},
    )
    assert result.returncode == 0, result.stderr
    refused = result.stdout
    assert "alias 'varnet' of 'myplugpkg' would shadow DIRECT's built-in direct.nn.varnet" in refused
    assert "alias 'Upper' of 'myplugpkg' must be lower case" in refused
    assert "name 'Radial' of 'myplugpkg.masks:RadialMaskFunc' would shadow a DIRECT built-in" in refused
    assert "refused plugin entry" in result.stderr


def test_builtin_engine_builds_plugin_losses_in_yaml_order():
    from direct.nn.loss_keys import KeyedLossFn
    from direct.nn.varnet.varnet_engine import EndToEndVarNetEngine
    from omegaconf import OmegaConf

    losses = [
        {"function": "haarpsi_loss", "multiplier": 0.5},
        {"function": "l1_loss", "multiplier": 1.0},
        {"function": "ssim_magnitude_loss", "multiplier": 2.0, "target_key": "target"},
    ]
    cfg = OmegaConf.create({"training": {"loss": {"crop": None, "losses": losses}}})
    engine = EndToEndVarNetEngine.__new__(EndToEndVarNetEngine)
    engine.cfg = cfg
    built = engine.build_loss()
    assert list(built) == ["haarpsi_loss", "l1_loss", "ssim_magnitude_loss"]
    assert all(isinstance(fn, KeyedLossFn) for fn in built.values())
    assert [entry.function for entry in cfg.training.loss.losses] == [entry["function"] for entry in losses]

    import torch

    from direct_nextaccel.losses.image import haarpsi_loss, ssim_magnitude_loss

    target = torch.rand(2, 32, 32) + 0.1
    source = target.flip(-1)
    assert built["haarpsi_loss"](target, target, "mean", None).abs().item() < 1e-4
    assert built["haarpsi_loss"](source, target, "mean", None).item() == pytest.approx(
        0.5 * haarpsi_loss(source, target).item()
    )
    assert built["ssim_magnitude_loss"](source, target, "mean", None).item() == pytest.approx(
        2.0 * ssim_magnitude_loss(source, target).item()
    )
    assert ssim_magnitude_loss(source, target).item() > 0


def test_wheel_install_registers_the_plugin(tmp_path):
    """Build the wheel, install it into a fresh venv, and check the .pth it ships activates the hook."""
    wheel_dir = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheel_dir), str(REPO)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    wheel = next(wheel_dir.glob("direct_nextaccel-*.whl"))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    venv_python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(venv_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # torch and DIRECT come from this environment's site-packages, added as a plain path (its .pth files,
    # including the editable install of this repository, are not processed there).
    (Path(purelib) / "outer_site.pth").write_text(SITE_PACKAGES + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv_python), "install", "--no-deps", str(wheel)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert (Path(purelib) / "direct_nextaccel.pth").exists()

    result = run_python(
        """
        import direct_nextaccel, direct.nn.nextaccel
        from direct.common.subsample import build_masking_function
        print(direct_nextaccel.__file__)
        print(type(build_masking_function("NestedRadial", accelerations=[32])).__name__)
        """,
        cwd=tmp_path,
        python=str(venv_python),
    )
    assert result.returncode == 0, result.stderr
    module_file, mask_name = result.stdout.split()
    assert module_file.startswith(purelib), module_file
    assert mask_name == "NestedRadialMaskFunc"


def test_plugin_startup_cost_is_small():
    """The .pth hook must not import torch or DIRECT at interpreter start."""
    result = run_python(
        "import sys; print(sorted(m for m in ('torch', 'direct', 'numpy') if m in sys.modules))", cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_plugin_losses_follow_training_loss_crop():
    """DIRECT crops losses to the header's reconstruction size only when ``training.loss.crop: header``."""
    import torch
    from direct.nn.varnet.varnet_engine import EndToEndVarNetEngine
    from omegaconf import OmegaConf

    target = torch.rand(1, 32, 32) + 0.1
    source = target.clone()
    source[:, :4] = 0  # differs only outside the central 16 x 16 region
    reconstruction_size = [torch.tensor([16]), torch.tensor([16]), torch.tensor([1])]
    values = {}
    for crop in (None, "header"):
        engine = EndToEndVarNetEngine.__new__(EndToEndVarNetEngine)
        engine.cfg = OmegaConf.create(
            {"training": {"loss": {"crop": crop, "losses": [{"function": "ssim_magnitude_loss", "multiplier": 1.0}]}}}
        )
        values[crop] = engine.build_loss()["ssim_magnitude_loss"](source, target, "mean", reconstruction_size).item()
    assert values["header"] < 1e-6 < values[None]


def test_plugin_dataset_and_its_config_resolve_as_direct_looks_them_up():
    """DIRECT finds datasets by `str_to_class("direct.data.datasets", name + "Dataset")` and their configuration by
    `load_dataset_config(name)`; both resolve the `direct.datasets` entry of this package."""
    from direct.environment import load_dataset_config
    from direct.utils import str_to_class

    from direct_nextaccel._hook import REGISTRY
    from direct_nextaccel.data.reference import FastMRIReferenceConfig, FastMRIReferenceDataset

    assert "FastMRIReference" in REGISTRY.load().datasets
    assert str_to_class("direct.data.datasets", "FastMRIReferenceDataset") is FastMRIReferenceDataset
    assert load_dataset_config("FastMRIReference") is FastMRIReferenceConfig
    with pytest.raises(AttributeError, match=r"unknown dataset name .NoSuch.: .*plugins add FastMRIReference"):
        str_to_class("direct.data.datasets", "NoSuchDataset")
    with pytest.raises(AttributeError, match=r"unknown dataset configuration .NoSuch."):
        load_dataset_config("NoSuch")


def test_third_party_dataset_and_refused_shadowing(tmp_path):
    _fake_distribution(
        tmp_path / "site",
        """
        [direct.datasets]
        Mine = myplugdata:MineDataset
        Bare = myplugdata:BareDataset
        FastMRI = myplugdata:MineDataset
        CalgaryCampinas = myplugdata:MineDataset
        """,
        {
            "myplugdata.py": """
            class MineConfig:
                pass

            class MineDataset:
                config_class = MineConfig

            class BareDataset:
                pass
            """,
        },
    )
    result = run_python(
        """
        import warnings
        warnings.simplefilter("always")
        import direct.config.defaults
        from direct.data import datasets, datasets_config
        from direct.environment import load_dataset_config
        import myplugdata
        assert datasets.MineDataset is myplugdata.MineDataset
        assert load_dataset_config("Mine") is myplugdata.MineConfig
        assert datasets.FastMRIDataset.__module__ == "direct.data.datasets"
        assert datasets_config.FastMRIConfig.__module__ == "direct.data.datasets_config"
        try:
            load_dataset_config("Bare")
        except TypeError as error:
            print(error)
        from direct_nextaccel._hook import REGISTRY
        print("\\n".join(REGISTRY.refused))
        """,
        cwd=tmp_path,
        env_extra={"PYTHONPATH": str(tmp_path / "site")},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "dataset 'myplugdata:BareDataset' has no config_class attribute (its BareConfig)" in out
    assert "direct.datasets name 'FastMRI' of 'myplugdata:MineDataset' would shadow a DIRECT built-in" in out
    assert "direct.datasets name 'CalgaryCampinas' of 'myplugdata:MineDataset' would shadow a DIRECT built-in" in out
    assert "refused plugin entry" in result.stderr


def test_unknown_mask_name_lists_directs_and_the_plugins_masks():
    from direct.common.subsample import build_masking_function

    with pytest.raises(AttributeError, match=r"unknown masking.name 'NestedCartesianZ': DIRECT has .*Gaussian2D.*"):
        build_masking_function("NestedCartesianZ", [32], [0.01])
    with pytest.raises(AttributeError, match=r"plugins add NestedCartesianX, NestedCartesianY, .*SuperResolution"):
        build_masking_function("NestedCartesianZ", [32], [0.01])
