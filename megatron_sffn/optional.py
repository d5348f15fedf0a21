"""Optional dependencies: a feature that needs one names the extra that installs it.

`pip install -e .` installs what training needs; a few features need more (declared as
extras in setup.cfg). Without this, a missing one is a ModuleNotFoundError traceback from
deep inside the feature, or worse a silent skip; `require` turns it into one line.
"""
from __future__ import annotations

import importlib
from types import ModuleType

# import name -> (distribution, extra of setup.cfg that installs it); tests/unit/test_dependencies.py
# checks every entry against setup.cfg.
EXTRAS = {
    "transformers": ("transformers", "hf"),
    "matplotlib": ("matplotlib", "plots"),
}


class MissingDependency(ImportError):
    """An optional package a feature needs is not installed; the message says how to get it."""


def install_hint(module: str) -> str:
    distribution, extra = EXTRAS[module]
    return f"pip install -e \".[{extra}]\" (or pip install {distribution})"


def require(module: str, feature: str) -> ModuleType:
    """Import `module` for `feature`, or raise MissingDependency in one line naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDependency(f"{feature} needs the '{EXTRAS[module][0]}' package, which is not "
                                f"installed ({error}): {install_hint(module)}") from None
