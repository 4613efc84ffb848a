"""The plugin manager: built-in and entry-point plugins, the name registries they fill, and the checks that a
plugin meets the contract (when it registers, and around each call into plugin code)."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError, UsageError

ENTRY_POINT_GROUP = "adaptive_exit"

DEFAULT_PLUGINS = (
    "adaptive_exit.signals",
    "adaptive_exit.weighting",
    "adaptive_exit.backbones",
    "adaptive_exit.data",
    "adaptive_exit.tracking",
)

KINDS = ("signals", "weightings", "backbones", "datasets")
BUILT_IN = "adaptive_exit (built-in)"
NO_DISTRIBUTION = "no distribution"  # a plugin registered in this process, not through an entry point
UNKNOWN_ORIGIN = (NO_DISTRIBUTION, "unknown")
HOOKS = tuple(name for name, value in vars(hookspecs).items() if hasattr(value, "adaptive_exit_spec"))


@dataclass(frozen=True)
class Registered:
    """A name registered by a plugin: the class behind it and the plugin (with distribution and version) that
    provides it."""

    name: str
    cls: type
    plugin: str
    version: str
    distribution: str = "adaptive-exit"


@dataclass(frozen=True)
class Broken:
    """A plugin that failed a check: the plugin, its distribution and version, and what is wrong."""

    plugin: str
    distribution: str
    version: str
    problem: str

    def message(self) -> str:
        """One line naming the plugin and its problem, and what to do."""
        fix = f"fix it or uninstall {self.distribution}" if self.distribution != NO_DISTRIBUTION else "fix it"
        return (f"plugin '{self.plugin}' ({source(self.distribution, self.version)}) {self.problem}; {fix} "
                f"(`adaptive-exit plugins` lists every broken plugin)")


def source(distribution: str, version: str) -> str:
    """Where a plugin comes from, for messages: its distribution and version."""
    return f"{distribution} {version}" if distribution != NO_DISTRIBUTION else "registered in this process"


@dataclass
class Loaded:
    """The plugin manager, where each plugin comes from (name -> (distribution, version)), and the plugins that
    could not be loaded."""

    manager: pluggy.PluginManager
    origins: dict[str, tuple[str, str]]
    broken: list[Broken]


@dataclass
class Scan:
    """Every registered name by kind, and every problem found while registering."""

    registries: dict[str, dict[str, Registered]]
    broken: list[Broken]


def _hook_problem(pm: pluggy.PluginManager, plugin: object, error: pluggy.PluginValidationError) -> str:
    """pluggy's validation error as one line: which hook implementation is wrong, and what the hook expects."""
    for attr in dir(plugin):
        opts = pm.parse_hookimpl_opts(plugin, attr)
        if opts is None:
            continue
        hook = opts.get("specname") or attr
        args = list(inspect.signature(getattr(plugin, attr)).parameters)
        if hook not in HOOKS:
            return f"implements the unknown hook {hook}({', '.join(args)}); the hooks are {', '.join(HOOKS)}"
        expected = list(inspect.signature(getattr(hookspecs, hook)).parameters)
        unknown = [arg for arg in args if arg not in expected]
        if unknown:
            return (f"implements {hook}({', '.join(args)}), but the hook passes {hook}({', '.join(expected)}): "
                    f"rename {', '.join(repr(arg) for arg in unknown)} (pluggy passes arguments by name)")
    return f"is not a valid plugin: {str(error).splitlines()[0]}"


def _register(loaded: Loaded, plugin: object, name: str) -> None:
    """Register one plugin module or object; a plugin that fails pluggy's validation is recorded as broken."""
    pm = loaded.manager
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        pm.unregister(name=name)
        loaded.broken.append(Broken(name, *loaded.origins.get(name, UNKNOWN_ORIGIN),
                                    _hook_problem(pm, plugin, exc)))


@lru_cache(maxsize=1)
def _load() -> Loaded:
    pm = pluggy.PluginManager("adaptive_exit")
    pm.add_hookspecs(hookspecs)
    version = importlib.metadata.version("adaptive-exit")
    loaded = Loaded(pm, {name: ("adaptive-exit", version) for name in DEFAULT_PLUGINS}, [])
    for module_name in DEFAULT_PLUGINS:
        _register(loaded, importlib.import_module(module_name), module_name)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        loaded.origins[ep.name] = (ep.dist.metadata["Name"], ep.dist.version) if ep.dist else UNKNOWN_ORIGIN
        try:
            module = ep.load()
        except Exception as exc:  # a broken third-party plugin must not look like an engine crash
            loaded.broken.append(Broken(ep.name, *loaded.origins[ep.name],
                                        f"failed to import ({ep.value}): {type(exc).__name__}: {exc}"))
            continue
        _register(loaded, module, ep.name)
    while True:  # hook implementations of hooks that do not exist
        try:
            pm.check_pending()
            break
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin)
            pm.unregister(exc.plugin)
            loaded.broken.append(Broken(name, *loaded.origins.get(name, UNKNOWN_ORIGIN),
                                        _hook_problem(pm, exc.plugin, exc)))
    return loaded


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager with built-in and entry-point plugins registered (those that load)."""
    return _load().manager


def class_problem(kind: str, cls: object) -> str | None:
    """What is wrong with a class registered as one of ``kind`` ('signals', ...), or None if nothing is."""
    from pydantic import BaseModel

    from .backbones import Backbone
    from .config import reserved_flag
    from .data import DatasetSource
    from .exits import EXIT_RULES, TASKS
    from .signals import Signal
    from .weighting import Weighting

    base = {"signals": Signal, "weightings": Weighting, "backbones": Backbone, "datasets": DatasetSource}[kind]
    if not (isinstance(cls, type) and issubclass(cls, base)):
        return f"registered {cls!r} as a {kind[:-1]}, but it is not a subclass of adaptive_exit.{base.__name__}"
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        return f"registered the {kind[:-1]} class {cls.__name__} without a name (set its class attribute 'name')"
    if kind in ("signals", "weightings"):
        options = getattr(cls, "Options", None)
        if not (isinstance(options, type) and issubclass(options, BaseModel)):
            return (f"registered {kind[:-1]} '{name}' whose Options is {options!r}, not a pydantic model "
                    f"(subclass pydantic.BaseModel, or use adaptive_exit.NoOptions)")
        for field, info in options.model_fields.items():
            clash = reserved_flag(field, info.annotation)
            if clash:
                return (f"registered {kind[:-1]} '{name}' whose option '{field}' clashes with the built-in flag "
                        f"{clash}; rename the option")
    if kind == "signals" and not hasattr(cls, "exit_when"):
        return (f"registered signal '{name}' without exit_when; set it to '<' or '<=' (a sample leaves when its "
                f"score is below the threshold) or '>' or '>=' (above): no rule is assumed")
    if kind == "signals" and cls.exit_when not in EXIT_RULES:
        return (f"registered signal '{name}' with exit_when = {cls.exit_when!r}; use one of "
                f"{', '.join(repr(rule) for rule in EXIT_RULES)}")
    if kind == "signals" and not (isinstance(cls.tasks, tuple) and cls.tasks and set(cls.tasks) <= set(TASKS)):
        return (f"registered signal '{name}' with tasks = {cls.tasks!r}; declare a non-empty tuple of "
                f"{', '.join(repr(task) for task in TASKS)}")
    return None


def _scan_kind(loaded: Loaded, kind: str, scan: Scan) -> None:
    pm = loaded.manager
    registry = scan.registries[kind]
    for impl in getattr(pm.hook, f"register_{kind}").get_hookimpls():
        name = pm.get_name(impl.plugin) or repr(impl.plugin)
        distribution, version = loaded.origins.get(name, UNKNOWN_ORIGIN)
        plugin = BUILT_IN if name in DEFAULT_PLUGINS else name

        def register(cls: type) -> None:
            problem = class_problem(kind, cls)
            if problem is None and cls.name in registry:
                problem = (f"registers the {kind[:-1]} '{cls.name}', which '{registry[cls.name].plugin}' registers "
                           f"too")
            if problem is not None:
                scan.broken.append(Broken(plugin, distribution, version, problem))
                return
            registry[cls.name] = Registered(cls.name, cls, plugin, version, distribution)

        try:
            impl.function(register=register)
        except Exception as exc:
            scan.broken.append(Broken(plugin, distribution, version,
                                      f"raised in register_{kind}: {type(exc).__name__}: {exc}"))


@lru_cache(maxsize=1)
def scan() -> Scan:
    """Every plugin's registrations, and every broken plugin; never raises for a broken plugin
    (``adaptive-exit plugins`` lists what it finds)."""
    loaded = _load()
    result = Scan({kind: {} for kind in KINDS}, list(loaded.broken))
    for kind in KINDS:
        _scan_kind(loaded, kind, result)
    result.registries = {kind: dict(sorted(entries.items())) for kind, entries in result.registries.items()}
    return result


def registry(kind: str) -> dict[str, Registered]:
    """All names of one kind ('signals', 'weightings', 'backbones', 'datasets') that plugins registered; a
    UsageError naming the plugin if any installed plugin is broken."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    found = scan()
    if found.broken:
        raise PluginError(found.broken[0].message())
    return found.registries[kind]


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


def describe(kind: str, cls: type) -> str:
    """The signal or weighting class as error messages name it: its name, plugin, distribution and version."""
    for entry in scan().registries[kind].values():
        if entry.cls is cls:
            origin = source(entry.distribution, entry.version)
            return f"{kind[:-1]} '{entry.name}' of plugin '{entry.plugin}' ({origin})"
    return f"{kind[:-1]} '{getattr(cls, 'name', '')}' ({cls.__module__}.{cls.__qualname__})"


class blamed:
    """Run plugin code: an exception from it becomes a one-line PluginError naming the plugin and ``what`` it
    was doing; the exception itself is the error's cause. A UsageError passes through unchanged. (A class, not a
    generator: early exit enters it on every layer.)"""

    def __init__(self, kind: str, cls: type, what: str):
        self.kind, self.cls, self.what = kind, cls, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type | None, exc: BaseException | None, traceback: object) -> None:
        if not isinstance(exc, Exception) or isinstance(exc, UsageError):
            return
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise PluginError(f"{describe(self.kind, self.cls)} raised in {self.what}: {type(exc).__name__}"
                          f"{': ' + detail if detail else ''} (--debug shows the traceback)") from exc


def create(kind: str, name: str, options: dict[str, Any], **kwargs: Any) -> Any:
    """An instance of the signal or weighting ``name`` with its validated ``options``."""
    from .config import validate_options

    cls = lookup(kind, name).cls
    validated = validate_options(cls.Options, options, f"{kind[:-1]}.options")
    with blamed(kind, cls, "__init__"):
        return cls(validated, **kwargs)


def call_lifecycle(hook_name: str, **kwargs: object) -> None:
    """Call a lifecycle hook on every registered plugin."""
    getattr(get_plugin_manager().hook, hook_name)(**kwargs)


def refresh() -> None:
    """Collect the registries again (after a plugin was registered in or removed from this process)."""
    scan.cache_clear()


def reset() -> None:
    """Forget loaded plugins and registries (tests register and unregister plugins)."""
    scan.cache_clear()
    _load.cache_clear()
