"""Resume that continues exactly: what a plugin engine keeps in its checkpoints besides DIRECT's, and when.

DIRECT's checkpoint holds the model, the additional models, the optimizer, the LR schedule and the gradient scaler.
A resumed DIRECT run then draws a new data order (its training sampler is seeded from the global numpy RNG when the
training loop starts, and picks datasets with the global ``random``) and continues every RNG from the process start,
so it leaves the uninterrupted run's path at its first iteration. :class:`ResumableEngine`, a base of every plugin
engine, adds what is missing, all through hooks DIRECT offers:

- the training state (:meth:`ResumableEngine.training_state`, saved by :class:`~.checkpoints.PluginCheckpointer`
  into every checkpoint): the torch (and CUDA), numpy and Python RNG states and every ``torch.Generator`` attribute
  of the engine (``_family_generator``, ``_mask_generator``), captured after the iteration's update, and the data
  order's seeds and position; engines add theirs (the AQ-VAE: its best validation SSIM) and extra state objects
  (:meth:`ResumableEngine.resume_checkpointables`: the discriminator's optimizer). Codebook EMA statistics are model
  buffers, so DIRECT's model entry already holds them;
- the data order (:class:`ResumableBatchSampler`): DIRECT's own order (the same per-dataset ``DistributedSampler``
  seeds, drawn as DIRECT draws them), but with the dataset choice on its own generator, so the order is a function of
  the seeds and the position alone; a resumed run rebuilds it and skips the batches already trained on, whatever the
  loader had prefetched when the checkpoint was written;
- the RNG states are put back when the resumed loop fetches its first batch (:class:`ResumingLoader`), after DIRECT
  and the DataLoader have drawn what they draw at any start;
- validation changes no training state: it draws from the RNGs (DIRECT's loader seeds, random decoding) and DIRECT
  leaves the additional models in eval mode after it; both are restored afterwards, so a checkpoint written before an
  iteration's validation is the state the next iteration starts from;
- interrupts (SIGINT, and SIGTERM as a cluster's preemption sends it): DIRECT saves the state of the interrupted,
  half-done iteration as if it were finished, so ``--resume`` skips that batch. Here the current iteration finishes,
  a checkpoint of it is written, and the run stops; a second signal stops at once (during validation it still writes
  the checkpoint of the finished iteration; inside an iteration it writes none). An exception inside an iteration
  writes no checkpoint either: ``--resume`` continues from the last complete one.

Several ranks (DistributedDataParallel): every rank's random states are checkpointed (gathered to rank 0, which
writes the file) and each rank takes back its own on ``--resume`` with the same number of processes; an interrupt
received by any rank is agreed by all of them at the start of an iteration (:meth:`ResumableEngine.agree_on_interrupt`)
so that they finish the same iteration and stop together, and the checkpoint holds it.

What stays outside: random numbers drawn by dataset transforms inside DataLoader worker processes (``--num-workers``
> 0), which restart from the workers' seeds on resume. The plugin's configs draw none there (masks are seeded per
file, ``use_seed: true``).
"""

from __future__ import annotations

import logging
import random
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from direct.data.samplers import DistributedSampler
from direct.exceptions import ProcessKilledException
from direct.utils import communication
from torch.utils.data import Sampler

from direct_nextaccel.core import distributed
from direct_nextaccel.core.checkpoints import PluginCheckpointer

__all__ = [
    "ResumableBatchSampler",
    "ResumableEngine",
    "ResumingLoader",
    "capture_random_state",
    "restore_random_state",
]

logger = logging.getLogger(__name__)

STATE_VERSION = 1
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


# Random states ------------------------------------------------------------------------------------------------------


def capture_random_state(device: torch.device | str | None = None) -> dict[str, Any]:
    """The global torch (and CUDA, when ``device`` is a GPU), numpy and Python RNG states, as tensors and plain
    values (a checkpoint is read with ``weights_only``)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()  # noqa: NPY002 - the global state DIRECT and datasets use
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_random_state(state: dict[str, Any], device: torch.device | str | None = None) -> None:
    """Put back what :func:`capture_random_state` captured."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    device = torch.device(device) if device is not None else None
    if "cuda" in state and device is not None and device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"], device)


# Data order ---------------------------------------------------------------------------------------------------------


class ResumableBatchSampler(Sampler):
    """DIRECT's training batch order (``ConcatDatasetBatchSampler``) as a function of seeds and position.

    Each dataset has DIRECT's infinite ``DistributedSampler`` (shuffled epochs, this rank's share), batches are taken
    from one dataset at a time with probability proportional to its size, exactly as DIRECT does, but that choice
    draws from a generator seeded with the first seed instead of the global ``random``. With one training dataset the
    order is DIRECT's own for the same seed.

    Parameters
    ----------
    datasets : sequence of Dataset
        The training datasets (DIRECT concatenates them in this order).
    batch_size : int
    seeds : sequence of int, optional
        One shuffle seed per dataset; drawn as DIRECT draws them (``communication.shared_random_seed()``, the same on
        every rank) when not given.
    start : int
        Number of batches of the order to skip: the iteration a resumed run starts at.
    """

    def __init__(self, datasets: Sequence, batch_size: int, seeds: Sequence[int] | None = None, start: int = 0):
        super().__init__()
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"batch_size should be a positive integer value, but got batch_size={batch_size}")
        self.sizes = [len(dataset) for dataset in datasets]
        if not self.sizes or min(self.sizes) <= 0:
            raise ValueError(f"every training dataset needs at least one sample, got sizes {self.sizes}")
        if seeds is None:
            seeds = [communication.shared_random_seed() for _ in self.sizes]
        self.seeds = [int(seed) for seed in seeds]
        if len(self.seeds) != len(self.sizes):
            raise ValueError(f"{len(self.seeds)} seeds for {len(self.sizes)} datasets")
        self.batch_size = batch_size
        self.start = int(start)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).tolist()
        self.weights = (np.asarray(self.sizes) / sum(self.sizes)).tolist()

    def _batches(self, dataset: int) -> Iterator[list]:
        batch = []
        for index in DistributedSampler(self.sizes[dataset], shuffle=True, seed=self.seeds[dataset]):
            batch.append(index + self.offsets[dataset])
            if len(batch) == self.batch_size:
                yield batch
                batch = []

    def __iter__(self) -> Iterator[list]:
        streams = [self._batches(dataset) for dataset in range(len(self.sizes))]
        choices = random.Random(self.seeds[0])
        position = 0
        while True:
            dataset = choices.choices(range(len(streams)), weights=self.weights)[0]
            batch = next(streams[dataset])
            if position >= self.start:
                yield batch
            position += 1

    def state(self, position: int) -> dict[str, Any]:
        """What a resumed run needs to continue this order at ``position``."""
        return {"seeds": list(self.seeds), "sizes": list(self.sizes), "position": int(position)}


class ResumingLoader:
    """The training DataLoader of a plugin engine: restores a resumed run's RNG states just before the first batch
    is fetched, tracks the iteration each batch belongs to, and stops the run at an iteration boundary after an
    interrupt (:meth:`ResumableEngine._stop`)."""

    def __init__(self, loader: torch.utils.data.DataLoader, engine: ResumableEngine, start: int):
        self.loader = loader
        self.engine = engine
        self.start = start

    def __iter__(self) -> Iterator[Any]:
        engine = self.engine
        iterator = iter(self.loader)  # draws the workers' base seed from the torch RNG, as at any start
        engine._restore_resumed_random_state()
        engine._interrupts_deferred = True
        total = engine.cfg.training.num_iterations
        position = self.start
        try:
            while True:
                if engine._interrupted and position < total:
                    engine._stop()
                try:
                    batch = next(iterator)
                except Exception:
                    if engine._interrupted:  # e.g. a worker that the signal reached too
                        engine._stop()
                    raise
                engine._iteration = position
                yield batch
                position += 1
        finally:
            engine._interrupts_deferred = False


def _ignore_interrupts(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C (SIGINT, sent to the whole process group) to the training process, which
    stops at an iteration boundary. SIGTERM keeps its default: multiprocessing ends workers with it at exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# The engine ---------------------------------------------------------------------------------------------------------


class ResumableEngine:
    """Mixin of :class:`~direct_nextaccel.core.engine.PluginEngine` (before DIRECT's ``Engine`` in the MRO): the
    checkpoint, resume and interrupt behaviour described in this module.

    Engines extend :meth:`training_state` / :meth:`restore_training_state` with their own values and
    :meth:`resume_checkpointables` with objects that have a ``state_dict`` (saved and loaded like DIRECT's optimizer).
    """

    _resume_state: dict[str, Any] | None = None
    _training_sampler: ResumableBatchSampler | None = None
    _in_training = False
    _interrupted = False
    _interrupt_pending = False  # under several ranks: received here, not yet agreed by all of them
    _interrupts_deferred = False
    _rank_states: tuple[int, list[dict[str, Any]]] | None = None  # (iteration, every rank's random state)
    _iteration: int | None = None  # the iteration whose batch was fetched last
    _completed: int | None = None  # the last iteration whose update is done
    _saved_iteration: int | None = None  # the last model_<N>.pt this process wrote

    # DIRECT assigns engine.checkpointer in train() and predict(); the plugin's checkpointer takes over that instance.
    @property
    def checkpointer(self) -> PluginCheckpointer | None:
        return self.__dict__.get("_plugin_checkpointer")

    @checkpointer.setter
    def checkpointer(self, value) -> None:
        if value is not None and not isinstance(value, PluginCheckpointer):
            value = PluginCheckpointer.adopt(value, self)
        self.__dict__["_plugin_checkpointer"] = value

    # What a checkpoint holds ----------------------------------------------------------------------------------------

    def resume_checkpointables(self) -> dict[str, Any]:
        """Objects with a ``state_dict`` saved in every checkpoint and loaded on ``--resume``. Default: none."""
        return {}

    def _generators(self) -> dict[str, torch.Generator]:
        return {name: value for name, value in vars(self).items() if isinstance(value, torch.Generator)}

    def _random_states(self) -> dict[str, Any]:
        return {
            "random": capture_random_state(self.device),
            "generators": {name: generator.get_state() for name, generator in self._generators().items()},
        }

    def training_state(self) -> dict[str, Any]:
        """The state the next iteration starts from, besides DIRECT's entries (called when a checkpoint is saved).

        Under several ranks also ``world_size`` and ``ranks``: every rank's random states (:meth:`_gather_ranks`), when
        they were gathered for the iteration this checkpoint holds."""
        state: dict[str, Any] = {"version": STATE_VERSION, **self._random_states()}
        if self._training_sampler is not None and self._completed is not None:
            state["data"] = self._training_sampler.state(self._completed + 1)
        if distributed.is_distributed():
            state["world_size"] = distributed.world_size()
            if self._rank_states is not None and self._rank_states[0] == self._completed:
                state["ranks"] = self._rank_states[1]
        return state

    def _gather_ranks(self) -> None:
        """Every rank's random states, gathered on every rank (all ranks call this at the same iteration, before a
        checkpoint of it is saved: rank 0 writes them)."""
        if distributed.is_distributed():
            self._rank_states = (self._completed, distributed.gather_objects(self._random_states()))

    def restore_training_state(self, state: dict[str, Any] | None, path: Path) -> None:
        """Take the training state of the checkpoint ``path`` that ``--resume`` loaded (None: it has none)."""
        if state is None:
            logger.warning(
                "%s has no training state (written by DIRECT or an older version of the plugin): the resumed run draws "
                "a new data order and new random numbers, so it does not repeat the uninterrupted run.",
                path,
            )
        self._resume_state = state

    def _restore_resumed_random_state(self) -> None:
        state, self._resume_state = self._resume_state, None
        if not state:
            return
        ranks, world_size = state.get("ranks"), state.get("world_size", 1)
        reseed = False
        if ranks is not None and len(ranks) == distributed.world_size():
            state = {**state, **ranks[distributed.rank()]}  # this rank's own states
        elif world_size != distributed.world_size():
            logger.warning(
                "The checkpoint was written by a run of %d processes, this one has %d: the data order and the random "
                "numbers differ from those of an uninterrupted run.",
                world_size,
                distributed.world_size(),
            )
            reseed = distributed.is_distributed()  # rank 0's states on every rank would repeat one stream N times
        elif distributed.is_distributed():
            logger.warning("The checkpoint holds rank 0's random states alone: every rank draws new random numbers.")
            reseed = True
        if reseed:
            seed = distributed.seed_rank()
            for index, generator in enumerate(self._generators().values()):
                generator.manual_seed(distributed.rank_seed(seed, index))
            return
        restore_random_state(state["random"], self.device)
        generators = self._generators()
        for name, generator_state in state.get("generators", {}).items():
            if name in generators:
                generators[name].set_state(generator_state)
            else:
                logger.warning(
                    "The checkpoint has the state of generator %s, which %s does not have.", name, type(self).__name__
                )

    # DIRECT's hooks -------------------------------------------------------------------------------------------------

    def train(self, optimizer, lr_scheduler, training_datasets, experiment_directory, *args, **kwargs):
        """DIRECT's training, with this module's interrupt handling."""
        self._resume_state = None
        self._training_sampler = None
        self._interrupted = self._interrupt_pending = self._interrupts_deferred = False
        self._iteration = self._completed = self._saved_iteration = None
        self._rank_states = None
        self._in_training = True
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {number: signal.signal(number, self._on_stop_signal) for number in STOP_SIGNALS}
        try:
            return super().train(optimizer, lr_scheduler, training_datasets, experiment_directory, *args, **kwargs)
        finally:
            self._in_training = self._interrupts_deferred = False
            for number, handler in previous.items():
                signal.signal(number, handler)

    def build_batch_sampler(self, dataset, batch_size, sampler_type, **kwargs):
        if sampler_type != "random":
            return super().build_batch_sampler(dataset, batch_size, sampler_type, **kwargs)
        data = (self._resume_state or {}).get("data")
        sizes = [len(item) for item in dataset]
        if data is not None and list(data["sizes"]) != sizes:
            logger.warning(
                "The training data changed since the checkpoint (dataset sizes %s, now %s): a new data order starts.",
                list(data["sizes"]),
                sizes,
            )
            data = None
        if data is None:
            self._training_sampler = ResumableBatchSampler(dataset, batch_size)
        else:
            self._training_sampler = ResumableBatchSampler(dataset, batch_size, data["seeds"], data["position"])
        return self._training_sampler

    def build_loader(self, dataset, batch_sampler=None, num_workers: int = 6):
        loader = super().build_loader(dataset, batch_sampler=batch_sampler, num_workers=num_workers)
        if loader.worker_init_fn is None:
            loader.worker_init_fn = _ignore_interrupts
        if isinstance(batch_sampler, ResumableBatchSampler):
            return ResumingLoader(loader, self, batch_sampler.start)
        return loader

    def checkpoint_model_at_interval(self, iter_idx, total_iter):
        self._completed = iter_idx  # called right after the iteration's update
        if distributed.is_distributed() and self._checkpoint_due(iter_idx, total_iter):
            self._gather_ranks()
        super().checkpoint_model_at_interval(iter_idx, total_iter)
        gathered = self._rank_states is not None and self._rank_states[0] == iter_idx
        if self._saved_iteration == iter_idx and distributed.is_distributed() and not gathered:
            logger.warning(
                "Checkpoint %d holds rank 0's random states alone (DIRECT saved when this engine did not expect it): "
                "a run resumed from it draws new random numbers on every rank.",
                iter_idx,
            )

    def _checkpoint_due(self, iter_idx: int, total_iter: int) -> bool:
        """DIRECT's rule (``Engine.checkpoint_model_at_interval``): from iteration 5, every ``checkpoint_steps``
        and at the last iteration."""
        steps = self.cfg.training.checkpointer.checkpoint_steps
        return iter_idx >= 5 and (iter_idx % steps == 0 or iter_idx + 1 == total_iter)

    def checkpoint_and_write_to_logs(self, iter_idx):
        """DIRECT's checkpoint when an iteration fails or is killed inside: not written here, since it would hold a
        half-done iteration that ``--resume`` then skips."""
        last = f"model_{self._saved_iteration}.pt" if self._saved_iteration is not None else "its last model_<N>.pt"
        logger.warning(
            "Training stopped inside iteration %d: no checkpoint is written mid-iteration; --resume continues after %s",
            iter_idx,
            last,
        )
        self.write_to_logs()

    def validation_loop(self, *args, **kwargs):
        """DIRECT's validation, leaving the RNGs and every model's train/eval mode as they were before it."""
        snapshot = self._snapshot()
        deferred, self._interrupts_deferred = self._interrupts_deferred, False  # a signal now stops validation
        try:
            return super().validation_loop(*args, **kwargs)
        except ProcessKilledException:
            self._put_back(snapshot)
            self._stop()
        finally:
            self._put_back(snapshot)
            self._interrupts_deferred = deferred

    def _snapshot(self) -> dict[str, Any]:
        modules = [self.model, *self.models.values()]
        return {
            "random": capture_random_state(self.device),
            "generators": {name: generator.get_state() for name, generator in self._generators().items()},
            "modes": [(module, module.training) for module in modules],
        }

    def _put_back(self, snapshot: dict[str, Any]) -> None:
        restore_random_state(snapshot["random"], self.device)
        for name, generator in self._generators().items():
            if name in snapshot["generators"]:
                generator.set_state(snapshot["generators"][name])
        for module, mode in snapshot["modes"]:
            module.train(mode)

    # Interrupts -----------------------------------------------------------------------------------------------------

    def _on_stop_signal(self, number, frame) -> None:
        name = signal.Signals(number).name
        if self._interrupts_deferred and not (self._interrupted or self._interrupt_pending):
            if distributed.is_distributed():
                self._interrupt_pending = True  # every rank stops after the same iteration: agree_on_interrupt
                logger.warning(
                    "Received %s: every rank finishes the iteration all of them have started when they agree on it "
                    "(this one, %s, or the next), then a checkpoint is saved and the run stops. Send it again to stop "
                    "at once.",
                    name,
                    self._iteration,
                )
                return
            self._interrupted = True
            logger.warning(
                "Received %s: finishing iteration %s (and its checkpoint and validation, if due), then saving a "
                "checkpoint and stopping. Send it again to stop at once.",
                name,
                self._iteration,
            )
            return
        logger.info("Received %s: stopping.", name)
        raise ProcessKilledException(number, name)

    def agree_on_interrupt(self, any_rank_pending: bool) -> None:
        """Under several ranks, at the first check of each training iteration: whether any rank has received a stop
        signal (one all-reduce, :meth:`~.engine.PluginEngine.check_finite_on_all_ranks`). If one has, every rank
        finishes this iteration and stops before the next, so all of them write the same checkpoint and none waits
        in an all-reduce that the others have left."""
        if any_rank_pending and not self._interrupted:
            self._interrupted = True
            logger.warning("A rank received a stop signal: every rank stops after iteration %s.", self._iteration)

    def _stop(self) -> None:
        """Write the checkpoint of the last complete iteration (unless written already) and leave, as DIRECT does."""
        completed = self._completed
        if completed is not None and completed != self._saved_iteration:
            if distributed.is_distributed():
                self._gather_ranks()
            self._require_checkpointer().save(completed)
        if completed is not None:
            logger.info(
                "Stopped after iteration %d: model_%d.pt holds it, and --resume continues with iteration %d exactly "
                "as an uninterrupted run would.",
                completed,
                completed,
                completed + 1,
            )
        else:
            logger.info("Stopped before this run completed an iteration: nothing new to save.")
        sys.exit(-1)  # the completed iterations' logs are written already; writing now would log the next one
