"""The command-line flags of plugin options: one per option field of the registered signals and weightings, and
where each given flag goes (which chosen plugin declares it)."""

from __future__ import annotations

import argparse
from typing import Any

from .config import flag_name, option_from_text
from .errors import UsageError

SECTIONS = {"signals": "signal", "weightings": "weighting"}
KIND_OF = {section: kind for kind, section in SECTIONS.items()}


def plugin_options() -> dict[str, list[tuple[str, str, Any]]]:
    """Every option field declared by a registered signal or weighting: field -> [(kind, name, field info)]."""
    from .plugins import registry

    options: dict[str, list[tuple[str, str, Any]]] = {}
    for kind in SECTIONS:
        for name, entry in registry(kind).items():
            for field, info in entry.cls.Options.model_fields.items():
                options.setdefault(field, []).append((kind, name, info))
    return options


def shown_default(info: Any) -> str:
    """A field's default as its flag takes it ('required' where there is none)."""
    if info.is_required():
        return "required"
    default = info.get_default(call_default_factory=True)
    if default is None:
        return "default none"
    if isinstance(default, (list, tuple, set, frozenset)):
        return "default " + (",".join(str(item) for item in default) or "empty")
    return f"default {default}"


def add_option_flag(group: Any, flag: str, dest: str, owners: list[tuple[str, str, Any]], help_text: str) -> None:
    if all(info.annotation is bool for _, _, info in owners):
        group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=help_text)
    else:
        group.add_argument(flag, dest=dest, default=argparse.SUPPRESS, metavar="VALUE", help=help_text)


def add_plugin_option_flags(parser: argparse.ArgumentParser, kinds: tuple[str, ...]) -> None:
    """A flag per option field of the registered signals and weightings (``--NAME``; those of no plugin of ``kinds``
    hidden from the help, so that they get the same error as any option of a plugin that is not chosen), and the
    qualified forms ``--signal.NAME`` / ``--weighting.NAME`` for ``kinds``, which name the plugin it goes to."""
    if len(kinds) > 1:
        qualified = ("--signal.NAME or --weighting.NAME names the plugin (needed where the chosen signal and "
                     "weighting both declare NAME)")
    else:
        qualified = f"--{SECTIONS[kinds[0]]}.NAME is the same flag"
    group = parser.add_argument_group(
        "plugin options", f"Each applies to the chosen {' or '.join(SECTIONS[kind] for kind in kinds)} that "
                          f"declares it; {qualified}. A list option takes comma-separated values, an optional one "
                          f"'none'.")
    for field, owners in sorted(plugin_options().items()):
        by_default: dict[str, dict[str, list[str]]] = {}
        for kind, name, info in owners:
            if kind in kinds:
                by_default.setdefault(shown_default(info), {}).setdefault(kind, []).append(name)
        declared = "; ".join(", ".join(f"{SECTIONS[kind]} {', '.join(names)}" for kind, names in by_kind.items())
                             + f": {default}" for default, by_kind in by_default.items())
        shown = [info for kind, _, info in owners if kind in kinds]
        help_text = f"{shown[0].description or field} [{declared}]" if shown else argparse.SUPPRESS
        add_option_flag(group, flag_name(field), f"option:{field}", owners, help_text)
        for kind in kinds:
            mine = [owner for owner in owners if owner[0] == kind]
            if mine:
                add_option_flag(group, f"--{SECTIONS[kind]}.{field.replace('_', '-')}",
                                 f"option:{SECTIONS[kind]}:{field}", mine, argparse.SUPPRESS)


def option_flag(key: str) -> str:
    """The flag behind an ``option:...`` key: ``--temperature`` or ``--signal.temperature``."""
    *section, field = key.split(":")[1:]
    return "--" + ".".join([*section, field.replace("_", "-")])


def option_label(key: str) -> str:
    """How a sweep names an option key: ``temperature`` or ``signal.temperature``."""
    return ".".join(key.split(":")[1:])


def option_targets(key: str, chosen: dict[str, str]) -> list[str]:
    """The sections ('signal', 'weighting') among ``chosen`` whose plugin declares the option of ``key``."""
    from .plugins import lookup

    *section, field = key.split(":")[1:]
    sections = [name for name in section if name in chosen] if section else list(chosen)
    return [name for name in sections if field in lookup(KIND_OF[name], chosen[name]).cls.Options.model_fields]


def route_options(values: dict[str, Any], chosen: dict[str, str]) -> tuple[dict[str, dict[str, Any]],
                                                                            dict[str, dict[str, str]]]:
    """The plugin options given as flags, put to the chosen plugins (``chosen``: section -> plugin name).

    Returns, per section, the options as pydantic takes them (``option_from_text``) and the flag that gave each;
    a UsageError for a flag that no chosen plugin declares, or that both the chosen signal and weighting declare.
    """
    from .plugins import lookup

    options: dict[str, dict[str, Any]] = {section: {} for section in chosen}
    flags: dict[str, dict[str, str]] = {section: {} for section in chosen}
    for key, value in values.items():
        if not key.startswith("option:"):
            continue
        *qualifier, field = key.split(":")[1:]
        targets = option_targets(key, chosen)
        if not targets:
            others = ", ".join(f"{SECTIONS[kind]} '{name}'" for kind, name, _ in
                               plugin_options().get(field, [])
                               if not qualifier or SECTIONS[kind] in qualifier)
            described = " or ".join(f"{section} '{name}'" for section, name in chosen.items()
                                    if not qualifier or section in qualifier)
            raise UsageError(f"{option_flag(key)} is an option of {others}, not of the chosen {described}")
        if len(targets) > 1:
            raise UsageError(f"{option_flag(key)} is an option of both the chosen signal '{chosen['signal']}' and "
                             f"weighting '{chosen['weighting']}'; use --signal.{field.replace('_', '-')} or "
                             f"--weighting.{field.replace('_', '-')}")
        section = targets[0]
        info = lookup(KIND_OF[section], chosen[section]).cls.Options.model_fields[field]
        options[section][field] = option_from_text(value, info.annotation) if isinstance(value, str) else value
        flags[section][field] = option_flag(key)
    return options, flags
