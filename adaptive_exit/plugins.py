"""The plugin manager: built-in plugins, entry-point plugins, and the name registries they fill."""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import pluggy

from . import hookspecs
from .errors import UsageError

ENTRY_POINT_GROUP = "adaptive_exit"

DEFAULT_PLUGINS = (
    "adaptive_exit.signals",
    "adaptive_exit.weighting",
    "adaptive_exit.backbones",
    "adaptive_exit.data",
    "adaptive_exit.tracking",
)

KINDS = ("signals", "weightings", "backbones", "datasets")


@dataclass(frozen=True)
class Registered:
    """A name registered by a plugin: the class behind it and the plugin (with version) that provides it."""

    name: str
    cls: type
    plugin: str
    version: str


def _distribution_versions() -> dict[str, str]:
    versions = {}
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group == ENTRY_POINT_GROUP:
                versions[ep.name] = dist.version
    return versions


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            module = ep.load()
        except Exception as exc:  # a broken third-party plugin must not look like an engine crash
            raise UsageError(
                f"plugin '{ep.name}' ({ep.value}) failed to import: {type(exc).__name__}: {exc}; "
                f"fix or uninstall it"
            ) from exc
        pm.register(module, name=ep.name)


@lru_cache(maxsize=1)
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager with built-in and entry-point plugins registered."""
    pm = pluggy.PluginManager("adaptive_exit")
    pm.add_hookspecs(hookspecs)
    try:
        for module_name in DEFAULT_PLUGINS:
            pm.register(importlib.import_module(module_name), name=module_name)
        _load_entry_points(pm)
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise UsageError(f"plugin '{pm.get_name(exc.plugin)}' is invalid: {exc}") from None
    return pm


def _plugin_label(pm: pluggy.PluginManager, plugin: object) -> tuple[str, str]:
    name = pm.get_name(plugin) or repr(plugin)
    if name in DEFAULT_PLUGINS:
        return "adaptive_exit (built-in)", importlib.metadata.version("adaptive-exit")
    return name, _distribution_versions().get(name, "unknown")


def _collect(kind: str) -> dict[str, Registered]:
    pm = get_plugin_manager()
    registry: dict[str, Registered] = {}
    hook = getattr(pm.hook, f"register_{kind}")
    for impl in hook.get_hookimpls():
        plugin, version = _plugin_label(pm, impl.plugin)

        def register(cls: type, _plugin: str = plugin, _version: str = version) -> None:
            name = getattr(cls, "name", None)
            if not isinstance(name, str) or not name:
                raise UsageError(f"plugin '{_plugin}' registered {cls!r} without a 'name' attribute")
            if name in registry:
                raise UsageError(
                    f"{kind[:-1]} '{name}' is registered twice: by '{registry[name].plugin}' and by "
                    f"'{_plugin}'; uninstall one of them"
                )
            registry[name] = Registered(name, cls, _plugin, _version)

        impl.function(register=register)
    return dict(sorted(registry.items()))


@lru_cache(maxsize=None)
def registry(kind: str) -> dict[str, Registered]:
    """All names of one kind ('signals', 'weightings', 'backbones', 'datasets') that plugins registered."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    return _collect(kind)


def lookup(kind: str, name: str) -> Registered:
    """The registered entry for ``name``, or a UsageError that lists what is available."""
    entries = registry(kind)
    if name in entries:
        return entries[name]
    if kind == "datasets":
        for prefix, entry in entries.items():
            if prefix.endswith("/") and name.startswith(prefix) and len(name) > len(prefix):
                return entry
    available = ", ".join(entries) or "none"
    raise UsageError(f"unknown {kind[:-1]} '{name}'; available: {available}")


def create(kind: str, name: str, options: dict[str, Any], **kwargs: Any) -> Any:
    """An instance of the signal or weighting ``name`` with its validated ``options``."""
    from .config import validate_options

    cls = lookup(kind, name).cls
    return cls(validate_options(cls.Options, options, f"{kind[:-1]}.options"), **kwargs)


def call_lifecycle(hook_name: str, **kwargs: object) -> None:
    """Call a lifecycle hook on every registered plugin."""
    getattr(get_plugin_manager().hook, hook_name)(**kwargs)


def reset() -> None:
    """Forget loaded plugins and registries (tests register and unregister plugins)."""
    registry.cache_clear()
    get_plugin_manager.cache_clear()
