"""Perceptual networks (LPIPS, DISTS) built offline from local weight files, never with a silently random backbone.

``lpips`` ships its learned linear layers inside the package but asks torchvision to download the ImageNet trunk
(``alexnet-owt-7be5be79.pth`` / ``vgg16-397923af.pth``); ``piq.DISTS`` downloads ``dists_weights.pt`` and the VGG16
trunk. Here the trunk and DISTS weights come from :func:`direct_nextaccel.weights.find_weight` or an explicit path.
When a file is missing the builders raise :class:`PerceptualBackboneUnavailable`, or, only when the caller passes
``missing_ok=True``, log one warning and return ``None`` so that the caller drops the perceptual term.
"""

import functools
import logging
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path

import lpips
import piq
import torch
from piq.perceptual import VGG16_LAYERS
from torchvision.models.vgg import cfgs, make_layers

from direct_nextaccel.weights import find_weight, missing_weight_message

logger = logging.getLogger(__name__)

LPIPS_BACKBONES = {"alex": "alexnet", "vgg": "vgg16"}
"""LPIPS trunk name (as ``lpips.LPIPS(net=...)`` spells it) -> key of :data:`~direct_nextaccel.weights.WEIGHT_SPECS`."""

_DISTS_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
_DISTS_CHANNELS = (3, 64, 128, 256, 512, 512)  # the input itself, then each DISTS layer


_UNREADABLE = (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError)
"""What ``torch.load`` raises for a truncated, corrupt or foreign file (an OSError such as a missing file passes)."""


class PerceptualBackboneUnavailable(FileNotFoundError):
    """Pretrained weights of a perceptual network are not on this machine; the message names the file and the
    environment variable ``DIRECT_NEXTACCEL_WEIGHTS_DIR`` that points at a folder holding it.

    A FileNotFoundError, not a RuntimeError: DIRECT's training loop catches RuntimeError to checkpoint and write its
    logs, and at iteration 0 that log writer divides by zero, so a RuntimeError raised by a loss at the first
    iteration reaches the user as DIRECT's ZeroDivisionError instead of this message.
    """


def _weight_file(name: str, weights_path: str | Path | None, network: str) -> Path:
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{network} weights_path {str(path)!r} is not a file")
        return path
    path = find_weight(name)
    if path is None:
        raise PerceptualBackboneUnavailable(f"{network} unavailable: {missing_weight_message(name)}")
    return path


def _torchvision_features(path: Path, name: str) -> dict[str, torch.Tensor]:
    """``features.*`` entries of a torchvision classifier checkpoint, keyed without the prefix (``"0.weight"``).

    Only the convolutional trunk is read, so a checkpoint holding just ``features.*`` is enough.
    """
    state = _load_file(path, f"torchvision {name} checkpoint")
    features = {key.removeprefix("features."): value for key, value in state.items() if key.startswith("features.")}
    if not features:
        raise ValueError(f"{path} has no 'features.*' entries: it is not a torchvision {name} checkpoint")
    return features


def _load_file(path: Path, kind: str) -> Mapping:
    """``torch.load`` of a weight file as a mapping; a file that is not one gives a one-line ValueError naming it.

    ValueError, not the RuntimeError torch raises for a corrupt file, for the reason given in
    :class:`PerceptualBackboneUnavailable`.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except _UNREADABLE as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"{path} cannot be read as a {kind}: {first_line}") from None
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, not the state dict of a {kind}")
    return state


def _load_trunk(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, kind: str) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        last_line = (str(error).strip().splitlines() or ["shape mismatch"])[-1].strip()
        raise ValueError(f"{path} does not fit the {kind}: {last_line}") from None


def build_lpips(
    backbone: str = "alex", weights_path: str | Path | None = None, *, missing_ok: bool = False
) -> lpips.LPIPS | None:
    """LPIPS (v0.1, learned linear layers from the ``lpips`` package) with its ImageNet trunk loaded from disk.

    Parameters
    ----------
    backbone : str
        ``"alex"`` (LPIPS-alex, the paper's default), ``"vgg"`` or ``"none"`` (no perceptual network: returns ``None``).
    weights_path : str or Path, optional
        The torchvision checkpoint (``alexnet-owt-7be5be79.pth`` or ``vgg16-397923af.pth``). Default: searched by
        :func:`~direct_nextaccel.weights.find_weight`.
    missing_ok : bool
        When the searched checkpoint is missing, log one warning and return ``None`` instead of raising.

    Returns
    -------
    lpips.LPIPS or None
        In eval mode with every parameter frozen, on CPU. Input: two (N, 3, H, W) images in [-1, 1].
        Output: (N, 1, 1, 1) distances.

    Raises
    ------
    PerceptualBackboneUnavailable
        The checkpoint was not found and ``missing_ok`` is false.
    FileNotFoundError
        ``weights_path`` was given and is not a file.
    """
    if backbone == "none":
        return None
    if backbone not in LPIPS_BACKBONES:
        raise ValueError(f"LPIPS backbone {backbone!r} is not one of {(*LPIPS_BACKBONES, 'none')}")
    weight_name = LPIPS_BACKBONES[backbone]
    try:
        path = _weight_file(weight_name, weights_path, f"LPIPS-{backbone}")
    except PerceptualBackboneUnavailable as error:
        if not missing_ok:
            raise
        logger.warning("LPIPS term disabled: %s", error)
        return None

    features = _torchvision_features(path, weight_name)
    with warnings.catch_warnings():
        # lpips asks torchvision for a random trunk through the deprecated `pretrained=False`; it is replaced below.
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        model = lpips.LPIPS(pretrained=True, net=backbone, pnet_rand=True, verbose=False)
    # lpips keeps torchvision's layer indices inside its slices: "slice2.3.weight" is "features.3.weight".
    trunk = {}
    for key in model.net.state_dict():
        index_and_parameter = key.split(".", 1)[1]
        if index_and_parameter not in features:
            raise ValueError(f"{path} lacks 'features.{index_and_parameter}': it is not a torchvision {weight_name}")
        trunk[key] = features[index_and_parameter]
    _load_trunk(model.net, trunk, path, f"LPIPS-{backbone} trunk ({weight_name})")
    return model.eval().requires_grad_(False)


class OfflineDISTS(piq.DISTS):
    """:class:`piq.DISTS` whose VGG16 trunk and alpha/beta weights are given instead of downloaded.

    It runs ``piq.ContentLoss.__init__`` with the arguments ``piq.DISTS.__init__`` (piq 0.8) would pass it, minus
    the two downloads; forward, pooling and distance are piq's.

    Parameters
    ----------
    vgg16_features : dict[str, torch.Tensor]
        State dict of torchvision's ``vgg16().features`` (keys ``"0.weight"``, ...).
    dists_weights : dict[str, torch.Tensor]
        piq's ``dists_weights.pt``: ``alpha`` and ``beta`` of shape (1, 1475, 1, 1).
    reduction : str
        ``"none"``, ``"mean"`` or ``"sum"`` over the batch.
    """

    def __init__(
        self, vgg16_features: dict[str, torch.Tensor], dists_weights: dict[str, torch.Tensor], reduction: str = "none"
    ) -> None:
        trunk = make_layers(cfgs["D"])
        trunk.load_state_dict(vgg16_features)
        layer_weights = [
            *torch.split(dists_weights["alpha"], _DISTS_CHANNELS, dim=1),
            *torch.split(dists_weights["beta"], _DISTS_CHANNELS, dim=1),
        ]
        piq.ContentLoss.__init__(
            self,
            trunk,
            layers=[VGG16_LAYERS[layer] for layer in _DISTS_LAYERS],
            weights=layer_weights,
            replace_pooling=True,
            reduction=reduction,
            normalize_features=False,
            allow_layers_weights_mismatch=True,
        )


def build_dists(
    weights_path: str | Path | None = None,
    vgg16_path: str | Path | None = None,
    *,
    missing_ok: bool = False,
) -> OfflineDISTS | None:
    """DISTS with piq's weights and the torchvision VGG16 trunk loaded from disk.

    Parameters
    ----------
    weights_path : str or Path, optional
        piq's ``dists_weights.pt``. Default: searched by :func:`~direct_nextaccel.weights.find_weight`.
    vgg16_path : str or Path, optional
        torchvision's ``vgg16-397923af.pth``. Default: searched.
    missing_ok : bool
        When a searched file is missing, log one warning and return ``None`` instead of raising.

    Returns
    -------
    OfflineDISTS or None
        In eval mode, frozen, on CPU, ``reduction="none"``. Input: two (N, 3, H, W) images in [0, 1] (larger than
        256 pixels on the short side are resized to 256 by piq). Output: (N,) values of ``1 - DISTS similarity``.

    Raises
    ------
    PerceptualBackboneUnavailable
        A file was not found and ``missing_ok`` is false.
    """
    try:
        dists_file = _weight_file("dists", weights_path, "DISTS")
        vgg_file = _weight_file("vgg16", vgg16_path, "DISTS")
    except PerceptualBackboneUnavailable as error:
        if not missing_ok:
            raise
        logger.warning("DISTS disabled: %s", error)
        return None
    dists_weights = _load_file(dists_file, "piq dists_weights.pt")
    if not {"alpha", "beta"} <= set(dists_weights):
        raise ValueError(f"{dists_file} has no 'alpha'/'beta' entries: it is not piq's dists_weights.pt")
    try:
        model = OfflineDISTS(_torchvision_features(vgg_file, "vgg16"), dists_weights)
    except RuntimeError as error:
        last_line = (str(error).strip().splitlines() or ["shape mismatch"])[-1].strip()
        raise ValueError(f"{vgg_file} and {dists_file} do not fit DISTS: {last_line}") from None
    return model.eval().requires_grad_(False)


def lpips_network(backbone: str, device: str | torch.device) -> lpips.LPIPS:
    """The LPIPS network for ``backbone`` on ``device``, built once per (backbone, weight file, device).

    Raises
    ------
    PerceptualBackboneUnavailable
        The torchvision checkpoint is not on this machine.
    """
    if backbone not in LPIPS_BACKBONES:
        raise ValueError(f"LPIPS backbone {backbone!r} is not one of {tuple(LPIPS_BACKBONES)}")
    path = _weight_file(LPIPS_BACKBONES[backbone], None, f"LPIPS-{backbone}")
    return _cached_lpips(backbone, path, torch.device(device))


def dists_network(device: str | torch.device) -> OfflineDISTS:
    """The DISTS network on ``device``, built once per (weight files, device).

    Raises
    ------
    PerceptualBackboneUnavailable
        ``dists_weights.pt`` or the VGG16 checkpoint is not on this machine.
    """
    dists_file = _weight_file("dists", None, "DISTS")
    vgg_file = _weight_file("vgg16", None, "DISTS")
    return _cached_dists(dists_file, vgg_file, torch.device(device))


@functools.cache
def _cached_lpips(backbone: str, path: Path, device: torch.device) -> lpips.LPIPS:
    return build_lpips(backbone, path).to(device)


@functools.cache
def _cached_dists(dists_file: Path, vgg_file: Path, device: torch.device) -> OfflineDISTS:
    return build_dists(dists_file, vgg_file).to(device)
