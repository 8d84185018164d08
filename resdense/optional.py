"""Optional dependencies: imported where they are used, and a missing one is a one-line error naming the extra.

``pyproject.toml`` declares each under an extra (``pip install 'resdense[export]'``); tests/test_dependencies.py
holds every third-party import of the package to a declared dependency or to a :func:`require` naming its extra.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from resdense.errors import MissingDependency

__all__ = ["require"]


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """``import module``, or a :class:`MissingDependency` naming what needs it and the extra that installs it.

    Args:
        module: the import name (``onnxruntime``).
        extra: the ``resdense`` extra that declares it (``export``).
        purpose: what needs it, for the message (``verifying an ONNX export``).
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(f"{purpose} needs the package {module!r}, which is not installed: "
                                f"pip install 'resdense[{extra}]'") from None
