"""What one training step costs (issue 14, item 4): nested-mask generation per batch, host-device synchronisations
per step, and seconds per iteration of every plugin engine.

``python -m direct_nextaccel.benchmark.speed.training`` prints one JSON object (``--output FILE`` also writes it):

- ``masks``: milliseconds to build the six nested masks of a batch (default 16 slices) at 256 x 256 and 640 x 320 for
  the four families, on the training path as the engines call it: ``fresh`` (a new acquisition per slice and step,
  ``acquisition.level_masks`` with a torch generator where it takes one, else with per-sample seeds, as the
  engines called it before) and ``file`` (the per-file masks of ``model.training_masks: file``, every file already
  seen once).
- ``syncs``: host-device synchronisations counted by :class:`HostSyncCounter` in one training ``_do_iteration`` of
  NextAccel (file and fresh masks) and of every other engine, and in what DIRECT's training loop adds around it
  (its ``storage.add_scalars`` of the losses converts each to a Python float).
- ``seconds_per_iteration``: ``_do_iteration`` plus the optimizer step of each engine at the tiny configs
  (``direct_nextaccel/configs/tiny_*.yaml``, 64 x 64, 4 coils, randomly initialised, tokenizers and teacher saved
  as bare checkpoints), median over ``--iterations`` after ``--warmup``.

Run with ``OMP_NUM_THREADS=1`` (the CPU figures in the README were) so that runs on a shared machine compare.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from direct_nextaccel.masks.nested import FAMILIES
from direct_nextaccel.resources import load_config

FILENAME = "file_brain_AXT1_900_0001.h5"
MATRICES: tuple[tuple[int, int], ...] = ((256, 256), (640, 320))

_TO_HOST = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.cpu,
    torch.Tensor.numpy,
    torch.Tensor.__bool__,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.__index__,
    torch.Tensor.nonzero,
    torch.nonzero,
    torch.equal,
    torch.Tensor.equal,
    torch.masked_select,
    torch.Tensor.masked_select,
    torch.unique,
    torch.Tensor.unique,
}


class HostSyncCounter(TorchFunctionMode):
    """Counts the tensor operations that make the host wait for the device, by name.

    Counted: reading a value on the host (``item``, ``tolist``, ``cpu``, ``numpy``, ``bool``/``float``/``int`` of a
    tensor, which is what ``if tensor.any():`` does), ``torch.equal``, and the operations whose output size depends on
    the data (``nonzero``, ``masked_select``, ``unique``, indexing with a boolean tensor). On a CPU every tensor is on
    the host, so every such call is counted (the count is what the same code would synchronise on a GPU), except
    reads of numbers drawn from a CPU ``torch.Generator``: those stay on the host on a GPU too.

    Attributes
    ----------
    calls : list of str
        One name per counted call, in order.
    sites : list of str
        Where each call came from: ``module.function`` of the innermost frame in the plugin outside this module.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.sites: list[str] = []
        self._host_draws: dict[int, weakref.ref] = {}  # id -> tensor drawn from a CPU generator

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _TO_HOST and not self._drawn_on_host(args[0] if args else None):
            self._record(getattr(func, "__name__", str(func)))
        elif func is torch.Tensor.__getitem__ and _has_bool_index(args[1] if len(args) > 1 else None):
            self._record("__getitem__[bool]")
        result = func(*args, **kwargs)
        generator = kwargs.get("generator")
        if isinstance(result, torch.Tensor) and generator is not None and generator.device.type == "cpu":
            self._host_draws[id(result)] = weakref.ref(result)
        return result

    def _record(self, name: str) -> None:
        self.calls.append(name)
        frame = sys._getframe(2)
        while frame is not None and not _plugin_module(frame.f_globals.get("__name__", "")):
            frame = frame.f_back
        self.sites.append("?" if frame is None else f"{frame.f_globals['__name__']}.{frame.f_code.co_name}")

    def _drawn_on_host(self, tensor: object) -> bool:
        reference = self._host_draws.get(id(tensor))
        return reference is not None and reference() is tensor

    @property
    def count(self) -> int:
        """Number of counted calls."""
        return len(self.calls)


def _plugin_module(name: str) -> bool:
    return name.startswith("direct_nextaccel") and name != __name__


def _has_bool_index(index: object) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(item, torch.Tensor) and item.dtype == torch.bool for item in items)


def _median_ms(function: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def mask_costs(batch: int = 16, repeats: int = 5) -> dict[str, dict[str, float]]:
    """Milliseconds per batch of ``batch`` slices for each family and matrix (see the module docstring).

    Returns
    -------
    dict
        ``"{family} {H}x{W}"`` -> ``{"fresh": ms, "file": ms}``.
    """
    import inspect

    from direct_nextaccel.nextaccel import acquisition

    takes_generator = "device" in inspect.signature(acquisition.level_masks).parameters
    names = [f"file_{index}.h5" for index in range(batch)]
    results = {}
    for shape in MATRICES:
        for family in FAMILIES:
            families = [family] * batch
            generator = torch.Generator().manual_seed(0)
            if takes_generator:

                def fresh(families=families, shape=shape, generator=generator):
                    return acquisition.level_masks(names, families, shape, 1 / 64, generator)
            else:

                def fresh(families=families, shape=shape, generator=generator):
                    seeds = [tuple(torch.randint(2**31, (2,), generator=generator).tolist()) for _ in families]
                    return acquisition.level_masks(names, families, shape, 1 / 64, seeds)

            def file(families=families, shape=shape):
                return acquisition.level_masks(names, families, shape, 1 / 64)

            results[f"{family} {shape[0]}x{shape[1]}"] = {
                "fresh": round(_median_ms(fresh, repeats), 2),
                "file": round(_median_ms(file, repeats), 2),
            }
    return results


# Engines at the tiny configs ----------------------------------------------------------------------------------------


def _merged(name: str, config_class, **overrides):
    from omegaconf import OmegaConf

    config = load_config(name)
    config.model = OmegaConf.merge(OmegaConf.structured(config_class), config.model, overrides)
    return config


def _model(model_class, model_config):
    from direct.utils import filter_arguments_by_signature
    from omegaconf import OmegaConf

    keys = {k: tuple(v) if OmegaConf.is_list(v) else v for k, v in model_config.items()}
    return model_class(**filter_arguments_by_signature(model_class, keys))


def build_engines(folder: Path, mixed_precision: bool = False, **nextaccel_overrides) -> dict[str, Callable[[], Any]]:
    """Builders of every plugin engine at its tiny config on the CPU, with random weights: the AQ-VAE, the MSVQ-VAE,
    NextAccel, the privileged teacher, distillation and MIAR. The frozen tokenizers and the teacher are saved as bare
    DIRECT checkpoints in ``folder``; ``mixed_precision`` is the engines' ``--mixed-precision`` (bfloat16 autocast);
    ``nextaccel_overrides`` go into NextAccel's model config (e.g. ``training_masks="fresh"``)."""
    from direct.data.transforms import fft2, ifft2
    from omegaconf import OmegaConf

    from direct_nextaccel.miar.config import MIARConfig, MSVQVAEConfig
    from direct_nextaccel.miar.miar import MIAR
    from direct_nextaccel.miar.msvqvae import MSVQVAE
    from direct_nextaccel.miar.msvqvae_engine import MSVQVAEEngine
    from direct_nextaccel.miar.transformer_engine import MIAREngine
    from direct_nextaccel.nextaccel.aqvae import AQVAE
    from direct_nextaccel.nextaccel.aqvae_engine import AQVAEEngine
    from direct_nextaccel.nextaccel.config import AQVAEConfig, NextAccelConfig
    from direct_nextaccel.nextaccel.distillation_engine import DistillationEngine, TeacherEngine
    from direct_nextaccel.nextaccel.nextaccel import NextAccel
    from direct_nextaccel.nextaccel.transformer_engine import NextAccelEngine

    torch.manual_seed(0)
    tokenizer = _model(AQVAE, _merged("tiny_aqvae.yaml", AQVAEConfig).model)
    teacher = _model(NextAccel, _merged("tiny_teacher.yaml", NextAccelConfig).model)
    teacher.init_context_encoder_from(tokenizer.encoder.state_dict())
    teacher.set_codebook(tokenizer.quantizer.codebook)
    msvqvae = _model(MSVQVAE, _merged("tiny_msvqvae.yaml", MSVQVAEConfig).model)
    paths = {name: folder / f"{name}.pt" for name in ("tokenizer", "teacher", "msvqvae")}
    for name, module in zip(paths, (tokenizer, teacher, msvqvae), strict=True):
        torch.save({"model": module.state_dict()}, paths[name])

    def transformer(name: str, engine_class, **overrides):
        config = _merged(name, NextAccelConfig, tokenizer_checkpoint=str(paths["tokenizer"]), **overrides)
        models = {}
        if "teacher" in config.get("additional_models", {}):
            config.model.teacher_checkpoint = str(paths["teacher"])
            teacher_config = OmegaConf.merge(OmegaConf.structured(NextAccelConfig), config.additional_models.teacher)
            config.additional_models = {"teacher": teacher_config}
            models["teacher"] = _model(NextAccel, teacher_config)
        else:
            config.additional_models = {}  # a random tokenizer has no sensitivity model
        engine = engine_class(config, _model(NextAccel, config.model), "cpu", fft2, ifft2, mixed_precision, **models)
        engine.initialise_from_tokenizer()
        return engine

    def tokenizer_engine(name: str, config_class, model_class, engine_class):
        config = _merged(name, config_class)
        return engine_class(config, _model(model_class, config.model), "cpu", fft2, ifft2, mixed_precision)

    def miar():
        config = _merged("tiny_miar.yaml", MIARConfig, tokenizer_checkpoint=str(paths["msvqvae"]))
        engine = MIAREngine(config, _model(MIAR, config.model), "cpu", fft2, ifft2, mixed_precision)
        engine.initialise_from_tokenizer()
        return engine

    return {
        "aqvae": lambda: tokenizer_engine("tiny_aqvae.yaml", AQVAEConfig, AQVAE, AQVAEEngine),
        "msvqvae": lambda: tokenizer_engine("tiny_msvqvae.yaml", MSVQVAEConfig, MSVQVAE, MSVQVAEEngine),
        "nextaccel": lambda: transformer("tiny_nextaccel.yaml", NextAccelEngine, **nextaccel_overrides),
        "teacher": lambda: transformer("tiny_teacher.yaml", TeacherEngine),
        "distillation": lambda: transformer("tiny_distill.yaml", DistillationEngine),
        "miar": miar,
    }


def training_batch(engine_name: str, batch: int = 4, size: int = 64, coils: int = 4) -> dict[str, Any]:
    """A DIRECT training batch of simulated slices of one file: fully sampled and masked k-space, the mask (level R32
    of the file's nested Cartesian-Y mask, or the 4 x 4 super-resolution block for the MSVQ-VAE and MIAR), RSS
    sensitivity estimate and target."""
    from direct_nextaccel.core.images import direct_batch
    from direct_nextaccel.data.simulate import simulate_volume
    from direct_nextaccel.masks.superresolution import superresolution_mask
    from direct_nextaccel.nextaccel import acquisition

    rows, cols = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    volume = np.stack(
        [
            ((cols / 0.7) ** 2 + (rows / 0.8) ** 2 < 1) + 0.5 * (((cols - 0.1 * i) / 0.2) ** 2 + (rows / 0.3) ** 2 < 1)
            for i in range(batch)
        ]
    ).astype(np.float32)  # B, H, W
    kspace = torch.view_as_real(
        torch.from_numpy(simulate_volume(volume, coils=coils, matrix=(size, size), seed=1)[0])
    ).float()  # B, C, H, W, 2
    if engine_name in ("msvqvae", "miar"):
        mask = torch.from_numpy(superresolution_mask((size, size), 4)).expand(batch, size, size)
    else:
        mask = acquisition.level_masks([FILENAME] * batch, ["cartesian_y"] * batch, (size, size), 1 / 64)[:, 0]
    return direct_batch(kspace, mask, [FILENAME] * batch)


@contextmanager
def training_steps(engine) -> Iterator[Callable[[dict[str, Any]], None]]:
    """A function running one training step of ``engine`` on a batch: ``_do_iteration`` (the plugin's part), then
    the optimizer step and ``zero_grad`` as DIRECT's loop does, inside DIRECT's event storage."""
    from direct.utils.events import EventStorage

    engine.ndim = 2
    engine.model.train()
    for module in engine.models.values():
        module.train()
    trainable = [p for p in engine.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    losses = engine.build_loss()

    def step(batch: dict[str, Any]) -> None:
        engine._do_iteration(dict(batch), losses)
        optimizer.step()
        optimizer.zero_grad()

    with EventStorage(0):
        yield step


def count_syncs(engine, batch: dict[str, Any]) -> dict[str, int]:
    """Synchronisations of one training ``_do_iteration`` of ``engine`` (after one step to warm up), and of DIRECT's
    conversion of the returned losses to floats (``storage.add_scalars``)."""
    from direct.utils.events import get_event_storage

    with training_steps(engine) as step:
        step(batch)
        losses = engine.build_loss()
        with HostSyncCounter() as plugin:
            output = engine._do_iteration(dict(batch), losses)
        with HostSyncCounter() as direct:
            loss_dict = output.data_dict
            get_event_storage().add_scalars(loss=sum(loss_dict.values()), **loss_dict)
    sites = [f"{name} in {site}" for name, site in zip(plugin.calls, plugin.sites, strict=True)]
    return {"plugin": plugin.count, "direct": direct.count, "calls": sites}


def seconds_per_iteration(iterations: int = 10, warmup: int = 2, batch: int = 4) -> dict[str, float]:
    """Median seconds per training step of each engine (see the module docstring)."""
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, build in build_engines(Path(folder)).items():
            data = training_batch(name, batch)
            with training_steps(build()) as step:
                results[name] = round(_median_ms(lambda step=step, data=data: step(data), iterations, warmup) / 1000, 4)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="also write the JSON here")
    parser.add_argument("--iterations", type=int, default=10, help="timed training steps per engine (default 10)")
    parser.add_argument("--skip", nargs="*", default=[], choices=("masks", "syncs", "steps"), help="parts to skip")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__}
    if "masks" not in args.skip:
        result["masks_ms_per_batch_of_16"] = mask_costs()
    if "syncs" not in args.skip:
        with tempfile.TemporaryDirectory() as folder:
            result["syncs"] = {}
            for mode in ("file", "fresh"):
                builders = build_engines(Path(folder), training_masks=mode)
                counted = count_syncs(builders["nextaccel"](), training_batch("nextaccel"))
                result["syncs"][f"nextaccel ({mode} masks)"] = counted
            for name, build in builders.items():
                if name != "nextaccel":
                    result["syncs"][name] = count_syncs(build(), training_batch(name))
    if "steps" not in args.skip:
        result["seconds_per_iteration"] = seconds_per_iteration(args.iterations)
    text = json.dumps(result, indent=1)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
