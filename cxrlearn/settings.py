"""Settings: each one defined once, with its default, its check and its help text.

A setting is a field of a frozen dataclass (`Preprocess`, `SizeSchedule`, `TrainConfig`,
`RunSettings`), made with `setting(default, help=..., check=...)`. That one line is the
setting's whole story; everything else reads it:

- the dataclass checks every value when it is made (`check_fields`, in `__post_init__`);
- `cxrlearn train` builds a flag from every setting that names one (`flag=`), with its help,
  its default and its check (`flag_settings`);
- `config.json` and checkpoints store `to_plain(settings)`, and `from_plain` reads it back:
  missing fields take their defaults, unknown ones are ignored, a wrong type is an error;
- `--resume` compares the run's own settings with the wanted ones (`differences`).

Settings nest (`RunSettings` holds a `Preprocess` and a `TrainConfig`), and every field name
is unique across the nest, so a setting is named by its field alone:
`replace_settings(run, image_size=64, seed=1)` finds `image_size` in the `Preprocess` and
`seed` in the `TrainConfig`.

Lesson: lessons/03_training_loop_and_devices.ipynb
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass
from pathlib import Path
from types import NoneType, UnionType
from typing import Any

__all__ = ["Check", "at_least", "between", "above", "one_of", "setting", "check_fields",
           "to_plain", "from_plain", "flag_settings", "replace_settings", "differences",
           "Difference"]


@dataclass(frozen=True)
class Check:
    """A rule one value must follow, and how to say it: `says` completes "lr ...".

    Attributes:
        test: True for a good value.
        says: What a good value is, e.g. "must be at least 1".
        choices: The good values, when they can be listed (`one_of`).
    """

    test: Callable[[Any], bool]
    says: str
    choices: tuple[Any, ...] | None = None

    def problem(self, name: str, value: Any) -> str | None:
        """None for a good value, else the sentence that says what is wrong."""
        return None if self.test(value) else f"{name} {self.says}, got {value!r}"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def at_least(low: int | float) -> Check:
    """A number `>= low` (0 reads "0 or more")."""
    says = "must be 0 or more" if low == 0 else f"must be at least {low}"
    return Check(lambda v: _finite(v) and v >= low, says)


def between(low: float, high: float, *, open_ends: bool = False) -> Check:
    """A number from `low` to `high`, ends included (excluded with `open_ends`)."""
    if open_ends:
        return Check(lambda v: _finite(v) and low < v < high, f"must be between {low} and {high}")
    return Check(lambda v: _finite(v) and low <= v <= high, f"must be between {low} and {high}")


def above(low: float) -> Check:
    """A finite number `> low`."""
    return Check(lambda v: _finite(v) and v > low, f"must be above {low}")


def one_of(choices: tuple[Any, ...]) -> Check:
    """One of `choices`."""
    words = ", ".join(map(str, choices))
    return Check(lambda v: v in choices, f"must be one of {words}", choices)


def setting(default: Any = MISSING, *, help: str, check: Check | None = None,
            default_factory: Callable[[], Any] | Any = MISSING, flag: str | None = None,
            metavar: str | None = None, group: str | None = None, shown: str | None = None,
            from_flag: Callable[[Any], Any] | None = None,
            to_flag: Callable[[Any], Any] | None = None) -> Any:
    """A dataclass field that carries its setting's help, check and command-line flag.

    Args:
        default: The default value.
        help: What the setting means, in whole sentences.
        check: The rule every value must follow (None: the type says enough).
        default_factory: Instead of `default`, for a mutable or nested default.
        flag: The command-line flag, e.g. `"--image-size"` (None: no flag).
        metavar: The flag's placeholder in `--help`.
        group: The `--help` section the flag is listed in.
        shown: How `--help` words the default, where its value says too little.
        from_flag: The setting's value from the flag's, when they differ in kind.
        to_flag: The flag's value from the setting's (the inverse of `from_flag`).
    """
    meta = {"help": help, "check": check, "flag": flag, "metavar": metavar, "group": group,
            "shown": shown, "from_flag": from_flag, "to_flag": to_flag}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def check_fields(settings: Any) -> None:
    """Run every field's check (a None value is not checked: it means "off" or "default").

    Raises:
        ValueError: The first bad value, e.g. "image_size must be between 16 and 2048, got 8".
    """
    for f in dataclasses.fields(settings):
        value, check = getattr(settings, f.name), f.metadata.get("check")
        if value is not None and check is not None:
            problem = check.problem(f.name, value)
            if problem:
                raise ValueError(problem)


def to_plain(settings: Any) -> dict[str, Any]:
    """Plain data for JSON or a checkpoint: nested settings as dicts, tuples as lists,
    paths as strings."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return str(value) if isinstance(value, Path) else value

    return plain(settings)


def from_plain(cls: type, data: Mapping[str, Any], where: str = "") -> Any:
    """Read `to_plain`'s output back into `cls`, checking every value's type.

    A missing field takes its default, an unknown one is ignored (a newer or older file may
    have one), and the dataclass then checks the values as always.

    Raises:
        ValueError: A missing field without a default, or a value of the wrong type; the
            message names the field, e.g. "train.lr must be a number, got 'fast'".
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{where.rstrip('.') or 'settings'} must be a mapping, got {data!r:.60}")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            values[f.name] = _read(hints[f.name], data[f.name], where + f.name)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ValueError(f"no {where}{f.name}")
    return cls(**values)


def _read(kind: Any, value: Any, name: str) -> Any:
    """One stored value as type `kind` (int, float, str, bool, Path, tuples, settings)."""
    options = typing.get_args(kind) if isinstance(kind, UnionType) else (kind,)
    if value is None:
        if NoneType in options:
            return None
        raise ValueError(f"{name} must not be empty")
    kind = next(k for k in options if k is not NoneType)
    if dataclasses.is_dataclass(kind):
        return from_plain(kind, value, name + ".")
    if typing.get_origin(kind) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a list, got {value!r:.60}")
        return tuple(_read(typing.get_args(kind)[0], v, name) for v in value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r:.60}")
        return value
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r:.60}")
        if kind is int and value != int(value):
            raise ValueError(f"{name} must be a whole number, got {value!r:.60}")
        return kind(value)
    if kind in (str, Path):
        if not isinstance(value, str):
            raise ValueError(f"{name} must be text, got {value!r:.60}")
        return kind(value)
    raise TypeError(f"cannot read a setting of type {kind}")  # a new type: teach _read it


def _nested(settings: Any) -> Iterator[tuple[Any, dataclasses.Field]]:
    """Every (settings object, field) of the nest, depth first; a nested object's own field
    comes before its fields."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        yield settings, f
        if dataclasses.is_dataclass(value) and f.metadata.get("flag") is None:
            yield from _nested(value)


def flag_settings(settings: Any) -> list[tuple[dataclasses.Field, Any]]:
    """The fields of the nest that name a command-line flag, each with its value here."""
    return [(f, getattr(owner, f.name)) for owner, f in _nested(settings)
            if f.metadata.get("flag")]


def replace_settings(settings: Any, **changes: Any) -> Any:
    """A copy of `settings` with the named fields changed, wherever in the nest they are.

    Raises:
        ValueError: A name that is no field of the nest, or a bad new value.
    """
    if not changes:
        return settings
    own = {f.name for f in dataclasses.fields(settings)}
    here = {k: v for k, v in changes.items() if k in own}
    rest = {k: v for k, v in changes.items() if k not in own}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if rest and f.name not in here and dataclasses.is_dataclass(value):
            inner = {k for k in rest if k in {g.name for _, g in _nested(value)}}
            if inner:
                here[f.name] = replace_settings(value, **{k: rest.pop(k) for k in inner})
    if rest:
        raise ValueError(f"no setting named {', '.join(sorted(rest))}")
    return dataclasses.replace(settings, **here)


@dataclass(frozen=True)
class Difference:
    """One setting whose value differs between two settings objects."""

    name: str
    flag: str | None
    ours: Any
    theirs: Any


def differences(ours: Any, theirs: Any) -> list[Difference]:
    """The settings of the nest whose values differ, in the order they are defined."""
    found = []
    for f in dataclasses.fields(ours):
        a, b = getattr(ours, f.name), getattr(theirs, f.name)
        if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b) and type(a) is type(b) \
                and f.metadata.get("flag") is None:
            found += differences(a, b)
        elif a != b:
            found.append(Difference(f.name, f.metadata.get("flag"), a, b))
    return found
