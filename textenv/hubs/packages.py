"""The optional packages of the task hubs, imported where they are used."""

from __future__ import annotations

import importlib
from types import ModuleType

HUB_PACKAGES = {"reasoning_gym": "reasoning-gym==0.1.25", "textarena": "textarena==0.7.4"}
"""The import name of each hub's package and the PyPI release textenv's adapter was checked with."""


def import_hub(module: str) -> ModuleType:
    """Import hub package ``module`` (a key of :data:`HUB_PACKAGES`), or raise an ImportError that names the
    install command.

    >>> import_hub("no_such_hub")
    Traceback (most recent call last):
    ValueError: no_such_hub is not a task hub textenv knows; use one of reasoning_gym, textarena.
    """
    if module not in HUB_PACKAGES:
        raise ValueError(f"{module} is not a task hub textenv knows; use one of {', '.join(HUB_PACKAGES)}.")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name != module:
            raise
        raise ImportError(
            f"The {module} task hub needs the optional package {HUB_PACKAGES[module].split('==')[0]}: "
            f"pip install 'textenv[hubs]' (or pip install {HUB_PACKAGES[module]})."
        ) from None
