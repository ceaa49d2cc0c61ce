"""The import-layer contract of pyproject.toml ([tool.importlinter]) holds; .ci/run checks it too."""

import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_import_layers_are_kept():
    lint_imports = pathlib.Path(sys.executable).with_name("lint-imports")
    command = str(lint_imports) if lint_imports.is_file() else shutil.which("lint-imports")
    if command is None:
        pytest.skip("lint-imports is not installed (pip install -e '.[test]')")
    result = subprocess.run([command, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
