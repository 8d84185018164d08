"""Where recipes are found, how a recipe file is read (one-line errors naming the file and the line), and how
``--set key=value`` overrides apply to it.

A recipe name such as ``demo_shapes_unet_r18`` is looked up in the working directory's ``configs/`` first, then
among the recipes shipped with the package: the repository's top-level ``configs/`` folder, installed as the package
``resdense.configs`` (``pyproject.toml`` maps it there), read through :mod:`importlib.resources`. So ``resdense list``,
``resdense demo`` and ``resdense train NAME`` work from a wheel, a plain ``pip install`` and an editable install.
"""

from __future__ import annotations

import copy
import difflib
import importlib.resources
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from resdense.errors import ConfigError

__all__ = ["apply_overrides", "find_config", "list_configs", "read_yaml", "shipped_recipes_dir", "splits_beside_recipe"]


def shipped_recipes_dir() -> Path | None:
    """The folder of the recipes installed with the package (``None`` when the package is not on a file system)."""
    try:
        root = importlib.resources.files("resdense.configs")
    except ModuleNotFoundError:
        # A source checkout put on sys.path without being installed: the same folder, beside the package.
        root = Path(__file__).resolve().parent.parent / "configs"
    return root if isinstance(root, Path) and root.is_dir() else None


def _config_dirs() -> list[Path]:
    dirs = [Path.cwd() / "configs", shipped_recipes_dir()]
    seen, out = set(), []
    for d in dirs:
        if d is not None and d.is_dir() and d.resolve() not in seen:
            seen.add(d.resolve())
            out.append(d)
    return out


def list_configs() -> list[Path]:
    """The recipes found by name: ``configs/*.yaml`` of the working directory, then the shipped ones (one per
    name, the working directory's first)."""
    found: dict[str, Path] = {}
    for d in _config_dirs():
        for p in sorted(d.glob("*.yaml")):
            found.setdefault(p.name, p)
    return [found[k] for k in sorted(found)]


def find_config(name: str | os.PathLike) -> Path:
    """A path as given when it exists; else the recipe called ``name`` (with or without ``.yaml``) in the working
    directory's ``configs/`` or among the shipped recipes."""
    path = Path(name)
    if path.exists():
        return path
    stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
    if path.parent == Path("."):
        for d in _config_dirs():
            candidate = d / f"{stem}.yaml"
            if candidate.exists():
                return candidate
    known = [p.stem for p in list_configs()]
    close = difflib.get_close_matches(stem, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else (f"; shipped recipes: {', '.join(known)}" if known else "")
    raise ConfigError(f"{name}: config file not found{hint}")


def read_yaml(path: str | os.PathLike) -> dict:
    """A YAML file's content (``{}`` when empty); a missing file or bad YAML is a one-line ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a YAML text file (not UTF-8: {err.reason} at byte {err.start})") from None
    except OSError as err:  # a folder, no permission...
        raise ConfigError(f"{path}: cannot read the config file ({err.strerror or err})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        if isinstance(err, yaml.reader.ReaderError):  # a character YAML does not allow
            line = text.count("\n", 0, err.position) + 1
        where = f" line {line}" if line is not None else ""
        why = str(getattr(err, "problem", None) or err).splitlines()[0]  # its other lines repeat the place
        raise ConfigError(f"{path}:{where} not valid YAML ({why})") from None
    return raw if raw is not None else {}


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str], source: str = "<dict>") -> dict:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a recipe dict; returns a new dict.

    Keys must exist in the recipe or in the ``train``/``eval`` schema, or be keyword arguments of the constructor
    that a ``model``/``data`` section feeds; the final recipe is re-validated, so a wrong type names the key.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: a recipe must be a mapping of sections, got {type(raw).__name__}")
    out = copy.deepcopy(dict(raw))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.lr=0.01")
        key, text = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(f"--set {item!r}: empty key component in {key!r}")
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(parts[:depth + 1])} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return out


def splits_beside_recipe(raw: Any, folder: Path) -> Any:
    """``raw`` with each relative ``data.<part>.split`` file resolved: relative to ``folder`` (the recipe's own)
    where it exists there, else relative to the shipped recipes' folder where it exists there (a shipped recipe
    copied elsewhere keeps its split files), else relative to ``folder`` (the error then names that path)."""
    data = raw.get("data") if isinstance(raw, Mapping) else None
    if not isinstance(data, Mapping):
        return raw
    raw = copy.deepcopy(dict(raw))
    shipped = shipped_recipes_dir()
    for part in raw["data"].values():
        split = part.get("split") if isinstance(part, dict) else None
        if isinstance(split, str) and split and not Path(split).is_absolute():
            beside = folder / split
            if not beside.is_file() and shipped is not None and (shipped / split).is_file():
                beside = shipped / split
            part["split"] = str(beside)
    return raw
