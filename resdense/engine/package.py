"""A trained model as a self-describing folder (a *package*), read back with no other file and no pickle.

A package holds:

- ``model.safetensors``: the weights the run evaluated (:func:`~resdense.engine.checkpoint.evaluated_weights`: the
  EMA of a run that kept one), in safetensors: reading them executes no code;
- ``config.yaml``: the resolved recipe the model was trained with (a valid recipe for ``resdense train`` too). Its
  paths (the data folders, split files and ``train.output_dir``) are those of the training machine, left as they
  were: only ``resdense eval`` reads the data, and ``--set data.val.root=...`` points it elsewhere;
- ``resdense.json``: the format version, the resdense and torch versions, task, architecture, class names, the input
  preprocessing of the :class:`~resdense.inference.predictor.Predictor`, the run's metrics and hardware, and the
  sha256 of ``model.safetensors``;
- ``README.md``: the model card (optional when reading).

:func:`read_package` checks the format version, the files and the weights' sha256 before any tensor is built;
:func:`~resdense.engine.loading.load_model` (so :meth:`Predictor.from_pretrained`, ``resdense predict DIR`` and
``resdense eval DIR``) rebuilds the model from it. :func:`~resdense.export.package.export_package` writes it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load
from torch import Tensor

from resdense.config import Config
from resdense.errors import ConfigError, WeightsError
from resdense.recipes import apply_overrides, read_yaml

from .build import config_from_dict

__all__ = ["PACKAGE_FORMAT", "PACKAGE_KIND", "WEIGHTS_FILE", "CONFIG_FILE", "INFO_FILE", "CARD_FILE", "Package",
           "is_package", "read_package", "read_package_info", "package_config", "trained_model_path"]

PACKAGE_KIND = "resdense-package"  # resdense.json's "format"
PACKAGE_FORMAT = 1  # resdense.json's "format_version": what this resdense writes and reads
WEIGHTS_FILE, CONFIG_FILE, INFO_FILE, CARD_FILE = "model.safetensors", "config.yaml", "resdense.json", "README.md"
_REQUIRED = (INFO_FILE, CONFIG_FILE, WEIGHTS_FILE)


@dataclass
class Package:
    """A package read and checked by :func:`read_package`.

    Attributes:
        path: its folder.
        info: ``resdense.json``.
        config: ``config.yaml`` as a plain recipe dict.
        state_dict: ``model.safetensors``, name -> CPU tensor.
    """

    path: Path
    info: dict[str, Any]
    config: dict[str, Any]
    state_dict: dict[str, Tensor]

    @property
    def class_names(self) -> list[str]:
        return [str(n) for n in self.info.get("class_names") or []]


def is_package(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` is a folder: where a trained model is expected, a folder can only be a package (a folder
    missing ``resdense.json`` is then refused by :func:`read_package_info`, naming it)."""
    return path is not None and not isinstance(path, Config) and Path(path).is_dir()


def _require(path: Path, names: Sequence[str]) -> None:
    if not path.is_dir():
        raise WeightsError(f"{path}: package folder not found")
    for name in names:
        if not (path / name).is_file():
            raise WeightsError(f"{path / name}: missing; a resdense package folder holds "
                               f"{', '.join(_REQUIRED)} (written by `resdense export CKPT --format package`)")


def read_package_info(path: str | os.PathLike) -> dict[str, Any]:
    """``resdense.json`` of the package at ``path``, once its files are there and its format version is this one's.

    Raises:
        WeightsError: a missing folder or file (named), ``resdense.json`` that is not JSON or not a package's, or
            another format version (the version found and the one supported).
    """
    path = Path(path)
    _require(path, (INFO_FILE,))  # first, so that another format version is named as such, whatever its files
    file = path / INFO_FILE
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"{file}: not valid JSON ({err})") from None
    if not isinstance(info, dict) or info.get("format") != PACKAGE_KIND:
        found = info.get("format") if isinstance(info, dict) else type(info).__name__
        raise WeightsError(f"{file}: not a resdense package description (format = {found!r}, "
                           f"expected {PACKAGE_KIND!r})")
    version = info.get("format_version")
    if version != PACKAGE_FORMAT:
        raise WeightsError(f"{file}: package format_version {version!r} (written by resdense "
                           f"{info.get('resdense_version', '?')}); this resdense reads format_version {PACKAGE_FORMAT}: "
                           "export the checkpoint again with this version, or load it with the version that wrote it")
    _require(path, _REQUIRED)
    return info


def read_package(path: str | os.PathLike) -> Package:
    """Read and check the package at ``path``: files, format version, the sha256 of ``model.safetensors`` against
    the one ``resdense.json`` records, then the tensors (safetensors: no code runs while reading). Whether the
    tensors fit the architecture is checked where the model is built
    (:func:`~resdense.engine.loading.load_model`).

    Raises:
        WeightsError: see :func:`read_package_info`; a ``model.safetensors`` changed since export (sha256 mismatch)
            or unreadable.
        ConfigError: ``config.yaml`` that is not YAML or not a mapping.
    """
    path = Path(path)
    info = read_package_info(path)
    weights = path / WEIGHTS_FILE
    data = weights.read_bytes()  # hashed and parsed from the same bytes: nothing can change in between
    want = str((info.get("weights") or {}).get("sha256", ""))
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise WeightsError(f"{weights}: sha256 {got} differs from the {want or 'missing value'} recorded in "
                           f"{INFO_FILE}: the file changed after export (damaged or replaced); export it again")
    try:
        state = load(data)
    except (SafetensorError, ValueError) as err:
        raise WeightsError(f"{weights}: not a readable safetensors file ({str(err).splitlines()[0]})") from None
    return Package(path, info, _raw_config(path), state)


def _raw_config(path: Path) -> dict[str, Any]:
    file = path / CONFIG_FILE
    raw = read_yaml(file)
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: a recipe must be a mapping, got {type(raw).__name__}")
    return raw


def package_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Config:
    """The package's ``config.yaml`` as a checked :class:`Config`, with ``--set`` style ``overrides`` (e.g.
    ``data.val.root=/data/membrane``: the recipe's paths are the training machine's). Its paths are taken as they
    are written, relative ones from the working directory, as they were when training (a split file is not moved
    beside ``config.yaml`` as a recipe file's is: the resolved recipe already holds the path it was read from)."""
    path = Path(path)
    read_package_info(path)
    raw, source = _raw_config(path), str(path / CONFIG_FILE)
    if overrides:
        raw = apply_overrides(raw, overrides, source)
        source = f"{source} (with --set {' '.join(overrides)})"
    return config_from_dict(raw, source)


def trained_model_path(config: Config | str | os.PathLike | None,
                       checkpoint: str | os.PathLike | None) -> str | os.PathLike:
    """The trained model a command uses: ``checkpoint`` when given, else ``config`` when it is a package (its
    recipe and its weights in one folder).

    Raises:
        ConfigError: no checkpoint and ``config`` is not a package folder.
    """
    if checkpoint is not None:
        return checkpoint
    if is_package(config):
        return config  # type: ignore[return-value]
    raise ConfigError(f"{config}: no checkpoint given; pass --checkpoint PATH with a recipe, or a package folder "
                      "(`resdense export CKPT --format package --out DIR`) in its place")
