"""Lazy plugin discovery for DIRECT, installed at interpreter start by ``direct_nextaccel.pth``.

DIRECT 2.2 has no plugin system: it imports models from ``direct.nn.<alias>``, masks from
``direct.common.subsample.<Name>MaskFunc``, datasets from ``direct.data.datasets.<Name>Dataset`` with their
configuration from ``direct.data.datasets_config.<Name>Config``, and accepts only its own loss names. This module adds
four entry-point groups that any installed package can use:

``direct.plugins``
    ``alias = "package"``: ``direct.nn.<alias>.<sub>`` *is* the module ``package.<sub>`` (same object in
    ``sys.modules``, no copies), so DIRECT finds ``<Cls>Config`` in ``direct.nn.<alias>.config`` and engines in
    ``direct.nn.<alias>.<alias>_engine``.
``direct.mask_functions``
    ``Name = "module:NameMaskFunc"``: usable as ``masking.name: Name``.
``direct.datasets``
    ``Name = "module:NameDataset"``: usable as ``training.datasets[].name: Name`` (and in validation and inference).
    The dataset class names its configuration dataclass (a DIRECT ``DatasetConfig`` subclass, into which DIRECT merges
    the YAML keys) in its class attribute ``config_class``, so one entry registers both.
``direct.losses``
    ``name = "module:function"``: usable in ``training.loss.losses`` by every :class:`MRIModelEngine`. The function
    has DIRECT's loss signature ``(source, target, reduction, reconstruction_size)``.

A model's configuration dataclass (``<Cls>Config``) may also declare, in a class attribute
``ENGINE_KEYS: ClassVar[tuple[str, ...]]`` (collected over its base classes), the keys its engine reads rather than
the model's constructor. DIRECT builds every model from the constructor's keys and warns "Dropping unknown constructor
arguments ... may be misspelled" for all the others; with the hook it warns only for keys nobody reads: not for
declared engine keys, nor for those DIRECT itself reads or adds (``model_name``, ``engine_name``,
``forward_operator``, ``backward_operator``). A key the YAML misspells never gets that far: DIRECT's merge into the
structured config refuses it, naming the key.

Nothing is discovered and nothing heavy is imported until a ``direct.*`` module that needs it is imported: the
only start-up cost is putting one finder on :data:`sys.meta_path`.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys
from types import ModuleType

PLUGIN_GROUP = "direct.plugins"
MASK_GROUP = "direct.mask_functions"
LOSS_GROUP = "direct.losses"
DATASET_GROUP = "direct.datasets"

_SUBSAMPLE = "direct.common.subsample"
_DATASETS = "direct.data.datasets"
_DATASETS_CONFIG = "direct.data.datasets_config"
_MRI_MODELS = "direct.nn.mri_models"
_ENVIRONMENT = "direct.environment"

DIRECT_MODEL_KEYS = frozenset({"model_name", "engine_name", "forward_operator", "backward_operator"})
"""Model keys DIRECT reads itself (the class and engine names) or adds to every model's (its operators)."""


class PluginRegistry:
    """Entry points of the four groups, read once on first use.

    Attributes
    ----------
    aliases : dict[str, str]
        Lower-case alias -> importable package name.
    masks : dict[str, importlib.metadata.EntryPoint]
        Mask name (without ``MaskFunc``) -> entry point.
    losses : dict[str, importlib.metadata.EntryPoint]
        Loss name -> entry point.
    datasets : dict[str, importlib.metadata.EntryPoint]
        Dataset name (without ``Dataset``) -> entry point of the dataset class.
    refused : list[str]
        One line per entry that was refused (shadowing a DIRECT built-in or another plugin).
    """

    def __init__(self) -> None:
        self._loaded = False
        self.aliases: dict[str, str] = {}
        self.masks: dict = {}
        self.losses: dict = {}
        self.datasets: dict = {}
        self.refused: list[str] = []

    def load(self) -> PluginRegistry:
        """Read the entry points (idempotent) and refuse names that would shadow DIRECT built-ins."""
        if self._loaded:
            return self
        self._loaded = True
        from importlib.metadata import entry_points

        builtin_nn = _direct_nn_builtins()
        for ep in entry_points(group=PLUGIN_GROUP):
            alias = ep.name.lower()
            if alias != ep.name:
                self._refuse(f"alias {ep.name!r} of {ep.value!r} must be lower case (DIRECT lower-cases aliases)")
            elif alias in builtin_nn:
                self._refuse(f"alias {alias!r} of {ep.value!r} would shadow DIRECT's built-in direct.nn.{alias}")
            elif alias in self.aliases and self.aliases[alias] != ep.value:
                self._refuse(f"alias {alias!r} of {ep.value!r} is already taken by {self.aliases[alias]!r}")
            else:
                self.aliases[alias] = ep.value
        for group, table, is_builtin in (
            (MASK_GROUP, self.masks, _is_builtin_mask),
            (LOSS_GROUP, self.losses, _is_builtin_loss),
            (DATASET_GROUP, self.datasets, _is_builtin_dataset),
        ):
            for ep in entry_points(group=group):
                if is_builtin(ep.name):
                    self._refuse(f"{group} name {ep.name!r} of {ep.value!r} would shadow a DIRECT built-in")
                elif ep.name in table and table[ep.name].value != ep.value:
                    self._refuse(f"{group} name {ep.name!r} of {ep.value!r} is already taken by {table[ep.name].value}")
                else:
                    table[ep.name] = ep
        return self

    def _refuse(self, message: str) -> None:
        import warnings

        self.refused.append(message)
        warnings.warn(f"direct-nextaccel: refused plugin entry: {message}", RuntimeWarning, stacklevel=3)

    def mask_class(self, name: str) -> type:
        """Load the mask class registered as ``name`` (``name`` may end in ``MaskFunc``)."""
        self.load()
        key = name.removesuffix("MaskFunc")
        if key not in self.masks:
            raise AttributeError(name)
        return self.masks[key].load()

    def dataset_class(self, name: str) -> type:
        """Load the dataset class registered as ``name`` (``name`` may end in ``Dataset``)."""
        self.load()
        key = name.removesuffix("Dataset")
        if key not in self.datasets:
            raise AttributeError(name)
        return self.datasets[key].load()

    def dataset_config(self, name: str) -> type:
        """The configuration dataclass of the dataset registered as ``name`` (``name`` may end in ``Config``).

        Raises
        ------
        TypeError
            If the dataset class has no ``config_class`` attribute.
        """
        self.load()
        key = name.removesuffix("Config")
        if key not in self.datasets:
            raise AttributeError(name)
        dataset = self.datasets[key].load()
        config = getattr(dataset, "config_class", None)
        if config is None:
            raise TypeError(f"dataset {self.datasets[key].value!r} has no config_class attribute (its {key}Config)")
        return config


REGISTRY = PluginRegistry()


def _direct_root() -> str | None:
    spec = _find_spec("direct")
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(iter(spec.submodule_search_locations))


def _direct_nn_builtins() -> set[str]:
    """Names of DIRECT's own ``direct.nn`` subpackages and modules, read from disk without importing torch."""
    root = _direct_root()
    if root is None:
        return set()
    nn_dir = os.path.join(root, "nn")
    return {name.removesuffix(".py") for name in os.listdir(nn_dir) if not name.startswith("_")}


def _is_builtin_mask(name: str) -> bool:
    root = _direct_root()
    if root is None:
        return False
    with open(os.path.join(root, "common", "subsample.py"), encoding="utf-8") as handle:
        return f"class {name.removesuffix('MaskFunc')}MaskFunc(" in handle.read()


def _is_builtin_dataset(name: str) -> bool:
    """Whether DIRECT defines ``<name>Dataset`` or ``<name>Config`` itself (read from disk, nothing imported)."""
    root = _direct_root()
    if root is None:
        return False
    for filename, suffix in (("datasets.py", "Dataset"), ("datasets_config.py", "Config")):
        with open(os.path.join(root, "data", filename), encoding="utf-8") as handle:
            if f"class {name}{suffix}(" in handle.read():
                return True
    return False


def _is_builtin_loss(name: str) -> bool:
    root = _direct_root()
    if root is None:
        return False
    with open(os.path.join(root, "nn", "types.py"), encoding="utf-8") as handle:
        return f'"{name}"' in handle.read()


class _AliasLoader:
    """Makes ``direct.nn.<alias>.<sub>`` the very module object ``<package>.<sub>``."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._real_spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self._real_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import machinery stamped the alias spec on the module; the module keeps its own identity.
        module.__spec__ = self._real_spec


class _PatchingLoader:
    """Runs the real loader, then a patch function on the freshly executed module."""

    def __init__(self, loader, patch) -> None:
        self.loader = loader
        self.patch = patch

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        self.patch(module)


class DirectPluginFinder:
    """Meta-path finder that resolves plugin aliases and patches five DIRECT modules after they load."""

    def find_spec(self, fullname: str, path=None, target=None):
        if not fullname.startswith("direct."):
            return None
        if fullname in _PATCHES:
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            if spec is None or spec.loader is None:
                return None
            spec.loader = _PatchingLoader(spec.loader, _PATCHES[fullname])
            return spec
        parts = fullname.split(".")
        if len(parts) < 3 or parts[1] != "nn":
            return None
        REGISTRY.load()
        package = REGISTRY.aliases.get(parts[2])
        if package is None:
            return None
        target_name = ".".join([package, *parts[3:]])
        target_spec = _find_spec(target_name)
        if target_spec is None:
            return None
        is_package = target_spec.submodule_search_locations is not None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(target_name), is_package=is_package)


def _module_getattr(module: ModuleType, suffix: str, resolve, what: str, plugin_names) -> None:
    """Give ``module`` a PEP 562 ``__getattr__`` resolving missing ``<Name><suffix>`` attributes with ``resolve``.

    A ``<Name><suffix>`` that neither DIRECT nor a plugin defines raises an AttributeError whose message lists the
    names there are (``what`` says which YAML key takes them; ``plugin_names()`` gives the plugins').
    """

    def __getattr__(name: str):
        if name.endswith(suffix):
            try:
                return resolve(name)
            except AttributeError:
                builtin = sorted(
                    key.removesuffix(suffix) for key in vars(module) if key.endswith(suffix) and key != suffix
                )
                raise AttributeError(
                    f"unknown {what} {name.removesuffix(suffix)!r}: DIRECT has {', '.join(builtin)}; plugins add "
                    f"{', '.join(sorted(plugin_names())) or 'none'}"
                ) from None
        raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}")

    module.__getattr__ = __getattr__


def _patch_subsample(module: ModuleType) -> None:
    """Let ``str_to_class("direct.common.subsample", "<Name>MaskFunc")`` find plugin masks."""
    _module_getattr(module, "MaskFunc", REGISTRY.mask_class, "masking.name", lambda: REGISTRY.load().masks)


def _patch_datasets(module: ModuleType) -> None:
    """Let ``str_to_class("direct.data.datasets", "<Name>Dataset")`` find plugin datasets."""
    _module_getattr(module, "Dataset", REGISTRY.dataset_class, "dataset name", lambda: REGISTRY.load().datasets)


def _patch_datasets_config(module: ModuleType) -> None:
    """Let ``str_to_class("direct.data.datasets_config", "<Name>Config")`` find plugin dataset configurations."""
    _module_getattr(
        module, "Config", REGISTRY.dataset_config, "dataset configuration", lambda: REGISTRY.load().datasets
    )


def _patch_mri_models(module: ModuleType) -> None:
    """Teach :meth:`MRIModelEngine.build_loss` the plugin loss names, for every engine that inherits it."""
    engine_cls = module.MRIModelEngine
    original = engine_cls.build_loss
    if getattr(original, "_direct_nextaccel", False):
        return

    def build_loss(self) -> dict:
        return build_loss_with_plugins(self, original)

    build_loss._direct_nextaccel = True
    build_loss.__doc__ = original.__doc__
    engine_cls.build_loss = build_loss


def engine_keys(config_class: type | None) -> frozenset[str]:
    """The keys a model configuration dataclass declares as its engine's: ``ENGINE_KEYS`` of it and its bases."""
    keys: set[str] = set()
    for cls in getattr(config_class, "__mro__", ()):
        keys.update(vars(cls).get("ENGINE_KEYS", ()))
    return frozenset(keys)


_ENGINE_KEYS_OF_MODEL: dict[type, frozenset[str]] = {}
"""Model class -> the engine keys of its configuration class, recorded when DIRECT builds the model."""


def _patch_environment(module: ModuleType) -> None:
    """Keep DIRECT's unknown-constructor-argument warning to the keys nobody reads.

    ``initialize_models_from_config`` learns each model's configuration class (the merged config node is typed with
    it) and ``filter_arguments_by_signature``, as DIRECT's environment calls it, leaves the keys read elsewhere out of
    the warning only; what the constructor receives is unchanged.
    """
    original_initialize = module.initialize_models_from_config
    if getattr(original_initialize, "_direct_nextaccel", False):
        return
    original_filter = module.filter_arguments_by_signature

    def initialize_models_from_config(cfg, models, *args, **kwargs):
        from omegaconf import OmegaConf

        nodes = {"model": cfg.model, **dict(cfg.get("additional_models") or {})}
        for name, node in nodes.items():
            if name in models and OmegaConf.is_config(node):
                _ENGINE_KEYS_OF_MODEL[models[name]] = engine_keys(OmegaConf.get_type(node))
        return original_initialize(cfg, models, *args, **kwargs)

    def filter_arguments_by_signature(func, kwargs, *, warn_dropped: bool = False):
        if not warn_dropped:
            return original_filter(func, kwargs)
        accepted = original_filter(func, kwargs)
        read = DIRECT_MODEL_KEYS | _ENGINE_KEYS_OF_MODEL.get(func, frozenset())
        unread = {key: value for key, value in kwargs.items() if key in accepted or key not in read}
        return original_filter(func, unread, warn_dropped=True)

    for wrapper, original in (
        (initialize_models_from_config, original_initialize),
        (filter_arguments_by_signature, original_filter),
    ):
        wrapper._direct_nextaccel = True
        wrapper.__doc__ = original.__doc__
        wrapper.__wrapped__ = original
    module.initialize_models_from_config = initialize_models_from_config
    module.filter_arguments_by_signature = filter_arguments_by_signature


def build_loss_with_plugins(engine, builtin_build_loss) -> dict:
    """Build DIRECT's own losses, then the plugin ones, keeping the YAML order and DIRECT's key handling.

    Besides the ``direct.losses`` entry points, an engine may declare its own loss terms as a class attribute
    ``ENGINE_LOSSES = {name: source_key}``: terms its forward pass computes itself (a commitment loss, a generator's
    adversarial loss). They are listed in YAML like any loss, so their multipliers are set there, and are built as
    keyed functions returning ``outputs[source_key]``. The configuration object is never mutated: DIRECT's builder
    sees a copy with only its own names.
    """
    from direct.nn.loss_keys import KeyedLossFn, resolve_loss_keys
    from direct.utils import multiply_function
    from omegaconf import OmegaConf

    REGISTRY.load()
    engine_losses = getattr(engine, "ENGINE_LOSSES", {})
    configured = list(engine.cfg.training.loss.losses)
    own_names = set(REGISTRY.losses) | set(engine_losses)
    plugin_entries = [entry for entry in configured if entry.function in own_names]
    if not plugin_entries:
        return builtin_build_loss(engine)

    builtin_cfg = OmegaConf.create(OmegaConf.to_container(engine.cfg, resolve=True))
    builtin_cfg.training.loss.losses = [entry for entry in configured if entry.function not in own_names]
    original_cfg = engine.cfg
    engine.cfg = builtin_cfg
    try:
        built = builtin_build_loss(engine) if builtin_cfg.training.loss.losses else {}
    finally:
        engine.cfg = original_cfg

    crop_to_header = engine.cfg.training.loss.crop == "header"
    for entry in plugin_entries:
        if entry.function in engine_losses:
            function, source_key, target_key = _engine_term, engine_losses[entry.function], None
        else:
            function = _with_loss_crop(REGISTRY.losses[entry.function].load(), crop_to_header)
            source_key, target_key = resolve_loss_keys(
                entry.function, getattr(entry, "source_key", None), getattr(entry, "target_key", None)
            )
        built[entry.function] = KeyedLossFn(multiply_function(entry.multiplier, function), source_key, target_key)
    return {entry.function: built[entry.function] for entry in configured}


def _engine_term(source, target=None, reduction="mean", reconstruction_size=None):
    """A loss term the engine computed itself (a scalar): DIRECT's keyed machinery only applies the multiplier."""
    return source


def _with_loss_crop(function, crop_to_header: bool):
    """Apply ``training.loss.crop`` as DIRECT's own losses do: only ``header`` crops to the reconstruction size."""
    if crop_to_header:
        return function

    def uncropped(source, target, reduction="mean", reconstruction_size=None):
        return function(source, target, reduction, None)

    uncropped.__name__ = getattr(function, "__name__", "loss")
    return uncropped


def _find_spec(name: str):
    """:func:`importlib.util.find_spec` without importing :mod:`importlib.util` at interpreter start."""
    import importlib.util

    try:
        return importlib.util.find_spec(name)
    except ModuleNotFoundError:
        return None


_PATCHES = {
    _SUBSAMPLE: _patch_subsample,
    _MRI_MODELS: _patch_mri_models,
    _DATASETS: _patch_datasets,
    _DATASETS_CONFIG: _patch_datasets_config,
    _ENVIRONMENT: _patch_environment,
}
_FINDER = DirectPluginFinder()


def install() -> None:
    """Put the finder first on :data:`sys.meta_path` and patch DIRECT modules that are already imported."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    for name, patch in _PATCHES.items():
        if name in sys.modules:
            patch(sys.modules[name])
