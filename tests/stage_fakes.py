"""Stand-ins for the pipeline's tests: ``direct train`` that writes only the final checkpoint, and tiny data folders."""

from __future__ import annotations

import itertools
from pathlib import Path

from omegaconf import OmegaConf

from direct_nextaccel import pipeline


class FakeDirectTrain:
    """Stands in for ``subprocess.Popen`` of ``direct train``: records the command and writes the final checkpoint
    (or fails with ``error`` as its last output line)."""

    def __init__(self, error: str | None = None):
        self.commands: list[list[str]] = []
        self.error = error

    def __call__(self, command, **kwargs):
        self.commands.append(command)
        options = dict(itertools.pairwise(command))
        config = OmegaConf.load(options["--cfg"])
        run_dir = Path(command[command.index("train") + 1]) / options["--name"]
        iterations = config.training.num_iterations
        lines = [f"iter: {i}\n" for i in range(iterations)]
        if self.error:
            lines += ["Traceback (most recent call last):\n", '  File "x.py", line 1\n', f"{self.error}\n"]
        else:
            pipeline.final_checkpoint(run_dir, iterations).write_bytes(b"weights")
        return _Process(lines, 1 if self.error else 0)

    @property
    def names(self) -> list[str]:
        return [command[command.index("--name") + 1] for command in self.commands]


class _Process:
    def __init__(self, lines, returncode):
        self.stdout, self.returncode = iter(lines), returncode

    def wait(self):
        return self.returncode


def write_data(root: Path, content: bytes = b"volume") -> dict[str, Path]:
    """``train``/``val`` folders with one stand-in ``.h5`` file each (the digest reads bytes, not HDF5)."""
    data = {split: root / split for split in ("train", "val")}
    for split, folder in data.items():
        folder.mkdir(parents=True)
        (folder / f"file_brain_AXT1_{split}.h5").write_bytes(content)
    return data
