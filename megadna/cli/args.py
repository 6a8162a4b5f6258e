"""Config dataclasses <-> command-line flags: the one place that turns a field into a --flag.

Every megadna command builds its parser with `parser()` (abbreviated flags refused: `--mode` is never
silently read as `--model`) and its flags with `add_config_arguments(parser, SomeConfig)`: one typed,
documented `--field` per dataclass field, help taken from the field's metadata. `config_from_args`
builds the config back (its `__post_init__` validates), and `to_argv` is the typed inverse, used
where a run is launched as a subprocess (the ablation), so renaming a field breaks at import, not at
run time.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

from megadna.errors import InputError

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_bool(text: str) -> bool:
    """'true/false/yes/no/1/0/on/off' (any case); anything else is an argparse error, not False."""
    t = text.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def named_models(models: str, names: str = "") -> dict[str, str]:
    """{name: path} from comma-separated `--models` and `--names` (default: each path's folder name), for
    the commands that compare models. Names must be as many as the models and all different (two
    exports in folders of one name would otherwise be one row)."""
    paths = [m.strip() for m in models.split(",") if m.strip()]
    labels = [n.strip() for n in names.split(",") if n.strip()] or [Path(m).name for m in paths]
    if len(labels) != len(paths):
        raise InputError(f"--names gives {len(labels)} names for {len(paths)} models")
    if len(set(labels)) != len(labels):
        raise InputError(f"two models are named alike ({', '.join(labels)}); give --names")
    return dict(zip(labels, paths))


def parser(prog: str | None = None, doc: str | None = None) -> argparse.ArgumentParser:
    """An ArgumentParser that keeps the docstring's layout and refuses abbreviated flags."""
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)


def _field_type(cls, f: dataclasses.Field):
    hints = typing.get_type_hints(cls)
    t = hints.get(f.name, str)
    if t not in (bool, int, float, str):
        raise TypeError(f"{cls.__name__}.{f.name}: only bool/int/float/str fields become flags, not {t!r}")
    return t


def add_config_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup, cls, exclude: tuple[str, ...] = ()) -> None:
    """One --flag per field of the dataclass `cls` (except `exclude`), typed, with its default and help."""
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.init:
            continue
        t = _field_type(cls, f)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata.get("help", "")
        if t is bool:
            # `--flag` alone means true; `--flag false` turns a default-true flag off.
            p.add_argument(f"--{f.name}", type=parse_bool, nargs="?", const=True, default=default, metavar="BOOL", help=f"{help_text} (default: {default})")
        else:
            p.add_argument(f"--{f.name}", type=t, default=default, help=f"{help_text} (default: {default!r})" if help_text else None)


def config_from_args(cls, args: argparse.Namespace, **overrides):
    """The dataclass `cls` built from parsed flags (fields missing from `args` keep their defaults)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.init and hasattr(args, f.name)}
    return cls(**(values | overrides))


def to_argv(cfg, only_changed: bool = True) -> list[str]:
    """The flags that reproduce `cfg` through `add_config_arguments` (by default only non-default fields)."""
    argv = []
    for f in dataclasses.fields(cfg):
        if not f.init:
            continue
        value = getattr(cfg, f.name)
        default = f.default if f.default is not dataclasses.MISSING else dataclasses.MISSING
        if only_changed and value == default:
            continue
        argv += [f"--{f.name}", str(value).lower() if isinstance(value, bool) else str(value)]
    return argv
