"""The demo set shipped in the package: a few 64 x 64 brain slices per contrast, checked, then simulated to k-space.

``direct_nextaccel/demo_data/`` holds magnitude slices (T1, T2, FLAIR; uint16) of the skull-stripped training and
validation subjects of ``shared/data/brain/README.md`` (which subjects and slices, licences and citations:
``demo_data/LICENCE.md``; regenerated from the shared volumes by ``demo_data/make_demo_set.py``). ``SHA256SUMS``
lists every file; :func:`demo_files` refuses a missing or altered one in one line naming it, before anything reads
it. :func:`simulate_demo_set` writes the fastMRI-layout k-space of ``direct-nextaccel simulate`` (4 coils, 64 x 64)
into ``train/`` and ``val/`` by the subject split: the same bytes on every machine.
"""

from __future__ import annotations

import hashlib
from contextlib import ExitStack
from importlib import resources
from pathlib import Path

PACKAGE = "direct_nextaccel"
FOLDER = "demo_data"
MANIFEST = "SHA256SUMS"
MATRIX = (64, 64)
COILS = 4


class DemoSetError(ValueError):
    """A demo-set file is missing or altered; the message is one line naming it."""


def _folder():
    return resources.files(PACKAGE).joinpath(FOLDER)


def demo_files() -> dict[str, str]:
    """The demo set's files (name -> SHA-256 in ``SHA256SUMS``), each checked against its digest.

    Raises
    ------
    DemoSetError
        The manifest or a file it lists is missing, or a file's content differs from its digest.
    """
    folder = _folder()
    manifest = folder.joinpath(MANIFEST)
    if not manifest.is_file():
        raise DemoSetError(f"demo set manifest {manifest} is missing: reinstall direct-nextaccel")
    expected = {}
    for line in manifest.read_text(encoding="utf-8").splitlines():
        digest, _, name = line.partition("  ")
        if not name or Path(name).name != name or len(digest) != 64:
            raise DemoSetError(
                f"demo set manifest {manifest} has a malformed line {line!r}: reinstall direct-nextaccel"
            )
        expected[name] = digest
    if not expected:
        raise DemoSetError(f"demo set manifest {manifest} lists no file: reinstall direct-nextaccel")
    for name, digest in expected.items():
        entry = folder.joinpath(name)
        if not entry.is_file():
            raise DemoSetError(f"demo set file {entry} is missing: reinstall direct-nextaccel")
        if hashlib.sha256(entry.read_bytes()).hexdigest() != digest:
            raise DemoSetError(
                f"demo set file {entry} is altered (its SHA-256 is not the one in {MANIFEST}): reinstall "
                "direct-nextaccel, or regenerate the set with demo_data/make_demo_set.py"
            )
    return expected


def simulate_demo_set(output: Path) -> dict[str, Path]:
    """Check the demo set (:func:`demo_files`) and write its simulated k-space into ``output/train`` and
    ``output/val`` (by the subject split); returns those folders.

    The folders must not hold ``.h5`` files yet (the caller decides what an existing simulation means).
    """
    from direct_nextaccel.data.simulate import simulate_npz, split_side

    names = demo_files()
    folders = {"train": output / "train", "val": output / "val"}
    with ExitStack() as stack:
        for name in names:
            path = stack.enter_context(resources.as_file(_folder().joinpath(name)))
            _, side = split_side(path)
            simulate_npz(path, folders[side], matrix=MATRIX, coils=COILS, progress=False)
    return folders
