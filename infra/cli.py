"""The check every command line's numeric options share (the tyro ``Args`` dataclasses of the scripts).

tyro parses ``--sft-examples -5`` into ``-5`` without complaint, and a count that slices a list then silently
means "all but 5". :func:`check_options` refuses, in ``__post_init__``, every int or float option that is
not a finite number of its declared type, negative, or zero where zero means nothing, naming the flag.

>>> from dataclasses import dataclass
>>> @dataclass
... class Args:
...     examples: int = 8
...     learning_rate: float = 1e-5
...     def __post_init__(self) -> None:
...         check_options(self, positive=("learning_rate",))
>>> Args(examples=-5)
Traceback (most recent call last):
ValueError: --examples -5 must be >= 0, e.g. --examples 8
>>> Args(learning_rate=0.0)
Traceback (most recent call last):
ValueError: --learning-rate 0.0 must be > 0, e.g. --learning-rate 1e-05
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

NUMERIC = {"int": int, "float": float, "int | None": int, "float | None": float}
"""The field annotations :func:`check_options` checks, and the type a value must have."""


def check_options(
    args: Any, positive: Iterable[str] = (), signed: Iterable[str] = (), types_only: bool = False
) -> None:
    """Check every ``int`` / ``float`` field (``None`` allowed where the annotation allows it) of the
    dataclass ``args``: the right type (bools and, for an int, floats refused), finite, and ``>= 0``;
    ``> 0`` for the fields in ``positive``; any sign for those in ``signed``. Raises ``ValueError`` naming
    the command-line flag and the field's default as an example. ``types_only``: the type alone (a first
    pass before a script's own range checks with their own messages)."""
    positive, signed = set(positive), set(signed)
    for field in dataclasses.fields(args):
        kind = NUMERIC.get(str(field.type).replace("Optional[int]", "int | None"))
        if kind is None:
            continue
        value, flag = getattr(args, field.name), "--" + field.name.replace("_", "-")
        default = field.default if field.default is not dataclasses.MISSING else None
        example = f"e.g. {flag} {default}" if default is not None else "or leave it out"
        if value is None and "None" in str(field.type):
            continue
        wrong_type = isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int)
        if wrong_type:
            what = "a whole number" if kind is int else "a number"
            raise ValueError(f"{flag} {value!r} must be {what}, {example}")
        if types_only:
            continue
        if not math.isfinite(value):
            raise ValueError(f"{flag} {value} must be finite, {example}")
        if field.name in positive and value <= 0:
            raise ValueError(f"{flag} {value} must be > 0, {example}")
        if field.name not in signed and value < 0:
            raise ValueError(f"{flag} {value} must be >= 0, {example}")
