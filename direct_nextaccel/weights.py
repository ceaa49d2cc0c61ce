"""Locating the optional pretrained weights this project can use, on local disk only (nothing is ever downloaded).

Each file is searched for, in order, in

1. ``$DIRECT_NEXTACCEL_WEIGHTS_DIR``,
2. torch's checkpoint cache ``$TORCH_HOME/hub/checkpoints`` (``TORCH_HOME`` defaults to ``$XDG_CACHE_HOME/torch``,
   then ``~/.cache/torch``, as in :func:`torch.hub.get_dir`), where torchvision and piq would have downloaded them,
3. ``$XDG_CACHE_HOME/direct_nextaccel/weights`` (default ``~/.cache/direct_nextaccel/weights``).

This module does not import torch, so ``direct-nextaccel doctor`` can report on weights cheaply.
"""

import os
from dataclasses import dataclass
from pathlib import Path

WEIGHTS_DIR_ENV = "DIRECT_NEXTACCEL_WEIGHTS_DIR"


@dataclass(frozen=True)
class WeightSpec:
    """One optional pretrained file.

    Attributes
    ----------
    filename : str
        File name as its publisher names it (torchvision and piq cache it under this name).
    purpose : str
        What this project uses it for.
    origin : str
        Where a user can obtain it (URL or Hugging Face repository).
    relative_paths : tuple[str, ...]
        Paths tried inside each search folder, in order; ``(filename,)`` unless a generic file name needs its
        repository folder to be unambiguous.
    """

    filename: str
    purpose: str
    origin: str
    relative_paths: tuple[str, ...] = ()

    def candidates(self) -> tuple[str, ...]:
        """Relative paths to try inside one search folder."""
        return self.relative_paths or (self.filename,)


_BIOMEDCLIP_REPO = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"

WEIGHT_SPECS: dict[str, WeightSpec] = {
    "alexnet": WeightSpec(
        filename="alexnet-owt-7be5be79.pth",
        purpose="LPIPS-alex backbone (torchvision AlexNet, ImageNet)",
        origin="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    ),
    "vgg16": WeightSpec(
        filename="vgg16-397923af.pth",
        purpose="LPIPS-vgg and DISTS backbone (torchvision VGG16, ImageNet)",
        origin="https://download.pytorch.org/models/vgg16-397923af.pth",
    ),
    "dists": WeightSpec(
        filename="dists_weights.pt",
        purpose="DISTS alpha/beta layer weights (piq)",
        origin="https://github.com/photosynthesis-team/piq/releases/download/v0.4.1/dists_weights.pt",
    ),
    "biomedclip": WeightSpec(
        filename="open_clip_pytorch_model.bin",
        purpose="BiomedCLIP ViT-B/16 image encoder for the AQ-VAE discriminator (open_clip)",
        origin=f"https://huggingface.co/{_BIOMEDCLIP_REPO}",
        relative_paths=(
            f"{_BIOMEDCLIP_REPO.split('/')[1]}/open_clip_pytorch_model.bin",
            "open_clip_pytorch_model.bin",
        ),
    ),
    "var_vqvae": WeightSpec(
        filename="vae_ch160v4096z32.pth",
        purpose="VAR multi-scale VQ-VAE initialisation",
        origin="https://huggingface.co/FoundationVision/var",
    ),
}


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def search_dirs() -> list[Path]:
    """Folders searched for weights, in order (only the ones that are configured; they need not exist)."""
    dirs = []
    if os.environ.get(WEIGHTS_DIR_ENV):
        dirs.append(Path(os.environ[WEIGHTS_DIR_ENV]).expanduser())
    torch_home = Path(os.environ.get("TORCH_HOME") or _cache_home() / "torch").expanduser()
    dirs.append(torch_home / "hub" / "checkpoints")
    dirs.append(_cache_home().expanduser() / "direct_nextaccel" / "weights")
    return dirs


def weights_dir_problem() -> str | None:
    """One line when ``$DIRECT_NEXTACCEL_WEIGHTS_DIR`` is set but names no folder (nothing there, or a file), else
    None: such a setting would otherwise be searched silently and find nothing."""
    value = os.environ.get(WEIGHTS_DIR_ENV)
    if not value:
        return None
    folder = Path(value).expanduser()
    if not folder.exists():
        return f"${WEIGHTS_DIR_ENV} is {value!r}, which does not exist"
    if not folder.is_dir():
        return f"${WEIGHTS_DIR_ENV} is {value!r}, which is a file, not a folder of weight files"
    return None


def _spec(name: str) -> WeightSpec:
    if name not in WEIGHT_SPECS:
        raise ValueError(f"unknown weight {name!r}; known: {', '.join(WEIGHT_SPECS)}")
    return WEIGHT_SPECS[name]


def find_weight(name: str) -> Path | None:
    """Path of the first local copy of a known weight file, or ``None``.

    Parameters
    ----------
    name : str
        A key of :data:`WEIGHT_SPECS` (``"alexnet"``, ``"vgg16"``, ``"dists"``, ``"biomedclip"``, ``"var_vqvae"``).

    Returns
    -------
    Path or None
        The file, searched in the folders of :func:`search_dirs` in order.
    """
    spec = _spec(name)
    for folder in search_dirs():
        for relative in spec.candidates():
            path = folder / relative
            if path.is_file():
                return path
    return None


def missing_weight_message(name: str) -> str:
    """One line saying which file is missing, where it was looked for and how to point at it."""
    spec = _spec(name)
    searched = ", ".join(str(folder) for folder in search_dirs())
    problem = weights_dir_problem()
    return (
        f"{spec.filename} ({spec.purpose}) not found in [{searched}]: put it in a folder named by "
        f"${WEIGHTS_DIR_ENV} (it is never downloaded; get it from {spec.origin})"
        + (f"; note: {problem}" if problem else "")
    )


def weights_report() -> list[tuple[str, str, Path | None]]:
    """``(name, purpose, path or None)`` for every known weight, for ``direct-nextaccel doctor``."""
    return [(name, spec.purpose, find_weight(name)) for name, spec in WEIGHT_SPECS.items()]
