"""The wheel, installed into a fresh environment, runs the demo to a table with every row and ``speed --config tiny``
(issue 11): the stage configs and the demo set are package data and nothing is read from this checkout.

The environment is a new venv holding only the wheel; its dependencies (torch, DIRECT, ...) are this environment's
installed distributions, seen through a folder of links that leaves out every ``direct_nextaccel`` file of this
environment (its editable install points at the checkout), so nothing is downloaded and the checkout cannot leak in.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from direct_nextaccel import pipeline

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _run(command: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PIP_NO_INDEX"] = "1"  # never the network
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, (
        f"{command[:3]} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


def _fresh_environment(root: Path, wheel: Path) -> Path:
    """A venv with ``wheel`` installed and this environment's other distributions linked in; returns its python."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(root / "env")], root)
    python = root / "env" / "bin" / "python"
    site = Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root).stdout.strip()
    )
    links = root / "dependencies"
    links.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        name = entry.name.lower()
        if "direct_nextaccel" in name or name.endswith(".pth") or name == "__pycache__":
            continue  # this checkout's package, its editable finder and metadata; start-up hooks
        (links / entry.name).symlink_to(entry)
    (site / "_dependencies.pth").write_text(f"{links}\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], root)
    return python


def test_wheel_installed_in_a_fresh_environment_runs_the_demo_and_speed(tmp_path):
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(REPO)],
        REPO,
    )
    (wheel,) = tmp_path.glob("direct_nextaccel-*.whl")
    shipped = {f"direct_nextaccel/configs/{p.name}" for p in (REPO / "direct_nextaccel" / "configs").glob("*.yaml")}
    demo_data = REPO / "direct_nextaccel" / "demo_data"
    shipped |= {f"direct_nextaccel/demo_data/{p.name}" for p in demo_data.iterdir() if p.suffix in (".npz", ".md")}
    shipped |= {"direct_nextaccel/demo_data/SHA256SUMS"}
    assert shipped and shipped <= set(zipfile.ZipFile(wheel).namelist())
    python = _fresh_environment(tmp_path, wheel)
    work = tmp_path / "work"  # the commands run outside the checkout
    work.mkdir()

    where = _run(
        [str(python), "-c", "import direct_nextaccel.resources as r; print(r.config_path('tiny_aqvae.yaml'))"], work
    )
    config = Path(where.stdout.strip())
    assert config.is_file() and config.is_relative_to(tmp_path / "env") and not config.is_relative_to(REPO)

    cli = str(python.parent / "direct-nextaccel")
    demo = _run([cli, "demo", "--budget", "0.05", "--output", str(work / "demo")], work)
    table = [[cell.strip() for cell in line.strip("|").split("|")] for line in demo.stdout.splitlines()]
    table = [cells for cells in table if len(cells) > 3 and cells[0] not in ("Method", ":---")]
    assert table[0][0].startswith("Zero-filled")
    methods = [cells[0] for cells in table[1:] if not cells[0].endswith("(bound)")]
    assert methods == [stage.name for stage in pipeline.STAGES if stage.benchmarked]
    assert [cells[0] for cells in table if cells[0].endswith("(bound)")] == [
        "AQ-VAE-all-levels (bound)",
        "AQ-VAE-R32-tokens (bound)",
    ]
    assert "simulated from magnitude images" in demo.stdout  # the default data: the demo set shipped in the wheel
    for cells in table:  # PSNR of T1 and T2: every method ran and was scored
        assert all(re.fullmatch(r"\**\d+\.\d+\**", cell) for cell in cells[1:3]), cells
    assert not re.search(r"failed|skipped", demo.stdout, re.IGNORECASE), demo.stdout

    speed = [cli, "speed", "--config", "tiny", "--models", "nextaccel", "--modes", "argmax", "--batch-sizes", "1"]
    result = _run([*speed, "--repeats", "1", "--warmup", "0", "--no-progress"], work)
    assert "NextAccel argmax" in result.stdout
