"""Pretrained weights: ImageNet tags resolved through torchvision's weight declarations, and checkpoint files.

One place maps foreign key layouts onto ours (torchvision names; timm's ResNet and smp's ResNet encoders share them,
so only wrappers' prefixes differ). Loading never unpickles arbitrary objects: ``torch.load(weights_only=True)`` or
safetensors.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import urllib.error
import urllib.parse
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from resdense.errors import WeightsError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LoadReport",
    "resolve_weights",
    "read_state_dict",
    "load_weights",
    "load_pretrained",
    "match_state_dict",
    "torchvision_key_map",
    "adapt_input_conv",
    "weights_tags",
    "cache_path",
    "download_state_dict",
]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Prefixes that wrappers put in front of a ResNet's own keys: DDP, smp models ("encoder."), torchvision detection
# models ("backbone.body."), generic wrappers. Checked longest first; keys outside the prefix are other heads.
_PREFIXES = ("module.", "backbone.body.", "encoder.", "backbone.", "model.")
_NORM_STATS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass
class LoadReport:
    """What happened to each key of a weight file. ``str(report)`` is a one-paragraph summary."""

    source: str
    layout: str = "torchvision"
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors from {self.source} ({self.layout} layout)"]
        for name in ("adapted", "dropped", "missing", "unexpected"):
            keys = getattr(self, name)
            if keys:
                parts.append(f"{name} {len(keys)}: {_preview(keys)}")
        if self.mismatched:
            parts.append(f"shape-mismatched {len(self.mismatched)}: {_preview([k for k, _, _ in self.mismatched])}")
        return "; ".join(parts)

    def refuse_mismatched(self, what: str) -> None:
        """Raise ``WeightsError`` naming the first shape-mismatched key and both shapes, if there is one."""
        if self.mismatched:
            key, got, want = self.mismatched[0]
            raise WeightsError(
                f"{self.source}: does not fit {what}: '{key}' has shape {list(got)} in the file but {list(want)} in "
                f"the model ({len(self.mismatched)} shape-mismatched keys in all)"
            )

    def refuse_missing_or_unexpected(self, what: str) -> None:
        """Raise ``WeightsError`` counting and naming the first missing and unexpected keys, if there are any."""
        if self.missing or self.unexpected:
            raise WeightsError(
                f"{self.source}: does not fit {what}: missing {len(self.missing)} keys ({_preview(self.missing)}), "
                f"unexpected {len(self.unexpected)} ({_preview(self.unexpected)})"
            )


def match_state_dict(sd: Mapping[str, Tensor], own: Mapping[str, Tensor], report: LoadReport, *,
                     drop: Callable[[str], bool] = lambda key: False,
                     reshape: Callable[[str, Tensor, Tensor], tuple[Tensor | None, str] | None] = lambda *_: None,
                     ) -> dict[str, Tensor]:
    """Sort the keys of a file's state dict ``sd`` against the model's ``own``: return the accepted tensors and
    record the others on ``report``. The one key matcher of the backbone and the detector loaders.

    Args:
        drop: for a key the model does not have: True files it under ``dropped`` (a part the model does not build),
            False under ``unexpected``.
        reshape: for a key whose shapes differ, ``(tensor, note)`` accepts ``tensor`` (filed under ``adapted`` as
            ``"key (note)"``), ``(None, note)`` keeps the model's initialisation (under ``dropped``), ``None`` files
            the key under ``mismatched``.
    """
    accepted: dict[str, Tensor] = {}
    for key, value in sd.items():
        target = own.get(key)
        if target is None:
            (report.dropped if drop(key) else report.unexpected).append(key)
        elif target.shape == value.shape:
            accepted[key] = value
        elif (fixed := reshape(key, value, target)) is not None:
            tensor, note = fixed
            if tensor is None:
                report.dropped.append(f"{key} ({note})")
            else:
                accepted[key] = tensor
                report.adapted.append(f"{key} ({note})")
        else:
            report.mismatched.append((key, tuple(value.shape), tuple(target.shape)))
    return accepted


def _preview(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n})" if len(keys) > n else "")


# ---- tags --------------------------------------------------------------------------------------------------------
def weights_tags(arch: str) -> list[str]:
    """The torchvision weight tags available for ``arch`` (e.g. ``["IMAGENET1K_V1", "IMAGENET1K_V2"]``)."""
    from torchvision.models import get_model_weights

    return [w.name for w in get_model_weights(arch)]


def resolve_weights(arch: str, tag: str):
    """Map ``"imagenet"`` / ``"DEFAULT"`` / ``"IMAGENET1K_V2"`` to torchvision's ``WeightsEnum`` entry for ``arch``.

    The entry carries the official URL (whose file name holds the SHA-256 prefix checked on download) and metadata
    (categories, transforms).
    """
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch)
    key = "DEFAULT" if tag.lower() in ("imagenet", "default") else tag.upper()
    if key.startswith(enum.__name__.upper() + "."):
        key = key.split(".", 1)[1]
    try:
        return enum[key] if key != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise WeightsError(
            f"weights={tag!r} is neither a file nor a tag of {arch}; tags: imagenet, {', '.join(weights_tags(arch))}"
        ) from None


def cache_path(url: str) -> Path:
    """Where ``torch.hub`` keeps (and looks for) the file of ``url``: ``$TORCH_HOME/hub/checkpoints/<file name>``.
    A copy downloaded on another machine and placed there is used without any network access."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urllib.parse.urlparse(url).path)


def download_state_dict(url: str, what: str, progress: bool = True) -> dict[str, Tensor]:
    """Fetch ``url`` into the torch hub cache (SHA-256 prefix in the file name checked) and read it safely.

    Any failure (no network, a proxy refusal, an HTTP error, a hash mismatch, a corrupt cached file) is one line of
    :class:`WeightsError` naming ``what``, the URL, the cache file where a copy fetched elsewhere can be placed, and
    the ``weights=PATH`` alternative.
    """
    try:
        return torch.hub.load_state_dict_from_url(url, progress=progress, check_hash=True, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        # urllib's URLError/HTTPError and socket errors are OSErrors; torch.hub reports a hash mismatch as a
        # RuntimeError and deletes the partial file.
        plain = isinstance(err, urllib.error.URLError) and not isinstance(err, urllib.error.HTTPError)
        reason = _first_line(err.reason if plain else err)  # URLError's str() wraps the reason in <urlopen error>
        raise WeightsError(
            f"could not download the {what} weights from {url} ({type(err).__name__}: {reason}); place a copy of "
            f"that file at {cache_path(url)} or pass weights=PATH to a local checkpoint"
        ) from None


WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


def read_weights(weights: str | os.PathLike | Mapping[str, Tensor], tag_url: Callable[[str], tuple[str, str]],
                 progress: bool = True) -> tuple[str, dict[str, Tensor]]:
    """The one dispatch over weight sources, for backbones and detectors alike: a state dict (unwrapped), a file
    (:func:`read_state_dict`), or a tag that ``tag_url`` maps to ``(url, name)``, downloaded once
    (:func:`download_state_dict`). Returns ``(source, state dict)``, ``source`` naming it in messages."""
    if isinstance(weights, Mapping):
        return "<state dict>", _unwrap(weights, "<state dict>")
    if isinstance(weights, (str, os.PathLike)) and (Path(weights).suffix in WEIGHT_FILE_SUFFIXES
                                                    or Path(weights).exists()):
        return str(weights), read_state_dict(weights)
    if isinstance(weights, str):
        url, what = tag_url(weights)
        return url, download_state_dict(url, what, progress)
    raise WeightsError(f"weights={weights!r}: expected a tag, a file path or a state dict")


# ---- files -------------------------------------------------------------------------------------------------------
def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a ``.safetensors`` or ``.pth/.pt`` file safely; unwrap ``{"state_dict": ...}`` / ``{"model": ...}``.

    A checkpoint that holds a weight average is read as that average, as timm's ``load_checkpoint(use_ema=True)``
    does: a resdense run's ``{"ema": {"weights": ...}}`` (the weights it evaluated, see ``train.ema_decay``) and
    timm's ``state_dict_ema``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weight file not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise WeightsError(f"{path}: not a readable safetensors file ({_first_line(err)})") from None
    else:
        obj = load_untrusted(path, "PyTorch checkpoint", hint="; save a plain state_dict "
                             "(torch.save(model.state_dict(), f)) or use safetensors")
    return _unwrap(obj, str(path))


def load_untrusted(path: Path, what: str, map_location: str | torch.device = "cpu", hint: str = ""):
    """``torch.load(path, weights_only=True)`` of a file that may hold anything, every failure one line of
    :class:`WeightsError`: refused (it needs arbitrary unpickling; ``hint`` says what to do instead) or unreadable.
    Any exception counts as unreadable: on a truncated or corrupt file torch's weights-only unpickler fails with
    whatever its bytes lead to (IndexError, KeyError, struct.error...), not only RuntimeError or EOFError."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        why = _first_line(err.args[0] if err.args else err)
        raise WeightsError(f"{path}: refused: the file needs arbitrary unpickling ({why}){hint}") from None
    except Exception as err:
        raise WeightsError(f"{path}: not a readable {what}, truncated or corrupt "
                           f"({type(err).__name__}: {_first_line(err)})") from None


def _first_line(err: object) -> str:
    text = str(err).strip().splitlines()
    for line in text:  # torch's unpickling message starts with a generic line; prefer the one naming the global
        if "GLOBAL" in line or "Unsupported global" in line:
            return line.strip()
    return text[0].strip() if text else type(err).__name__


def weight_average(obj: object) -> Mapping[str, Tensor] | None:
    """The weight average a checkpoint holds, else None: a resdense run's ``{"ema": {"weights": ...}}`` (what the
    run evaluated) or timm's ``state_dict_ema``."""
    if not isinstance(obj, Mapping):
        return None
    ema = obj.get("ema")
    if isinstance(ema, Mapping) and isinstance(ema.get("weights"), Mapping):
        return ema["weights"]
    return obj["state_dict_ema"] if isinstance(obj.get("state_dict_ema"), Mapping) else None


def _unwrap(obj: object, source: str) -> dict[str, Tensor]:
    average = weight_average(obj)
    obj = average if average is not None else obj
    for _ in range(3):  # {"model": {"state_dict": ...}} and similar nestings
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in ("state_dict", "model", "model_state", "module") if isinstance(obj.get(k), Mapping)), None)
            if inner is not None and not all(isinstance(v, Tensor) for v in obj.values()):
                obj = inner
                continue
        break
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"{source}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    key = next((k for k in obj if not isinstance(k, str)), None)
    if key is not None:
        raise WeightsError(f"{source}: key {key!r} is a {type(key).__name__}, not a name; expected a state dict")
    bad = next((k for k, v in obj.items() if not isinstance(v, Tensor)), None)
    if bad is not None:
        raise WeightsError(f"{source}: entry {bad!r} is a {type(obj[bad]).__name__}, not a tensor; expected a state dict")
    return dict(obj)


def _strip_prefix(sd: dict[str, Tensor], own_keys: set[str]) -> tuple[dict[str, Tensor], str, list[str]]:
    """Remove one wrapper prefix if that makes the keys ours. Returns (state dict, layout name, keys outside it)."""
    if any(k in own_keys for k in sd):
        return sd, "torchvision", []
    for prefix in _PREFIXES:
        inside = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if any(k in own_keys for k in inside):
            outside = [k for k in sd if not k.startswith(prefix)]
            layout = {"encoder.": "smp", "backbone.body.": "torchvision-detection"}.get(prefix, f"prefix {prefix!r}")
            return inside, layout, outside
    return sd, "unknown", []


def adapt_input_conv(weight: Tensor, in_channels: int) -> Tensor:
    """Adapt an RGB ``conv1`` weight ``[O, 3, k, k]`` to ``in_channels``: sum for 1, else tile and rescale by 3/C.

    The rescaling keeps the expected activation magnitude for inputs whose channels look like the RGB ones (timm's rule).
    """
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = math.ceil(in_channels / weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def torchvision_key_map(model: nn.Module) -> dict[str, str]:
    """The model's state-dict keys in torchvision's flat ResNet layout (``conv1.weight`` ... ``fc.bias``) -> its own.

    A ResNet's keys are that layout. A model that holds its ResNet under one of the wrapper prefixes (the classifier of
    :mod:`resdense.heads`: ``backbone.*`` beside its own ``fc.*``) is matched with that prefix removed: the one place
    where a torchvision classifier checkpoint is mapped onto such a model, for :func:`load_weights` and for the
    classifier's own ``load_state_dict``.
    """
    own = list(model.state_dict())
    prefix = next((p for p in _PREFIXES if "conv1.weight" not in own and f"{p}conv1.weight" in own), "")
    return {key.removeprefix(prefix): key for key in own}


def _from_own_layout(sd: dict[str, Tensor], names: dict[str, str]) -> dict[str, Tensor]:
    """A state dict saved from a model of this kind (a classifier's ``backbone.*``, ``fc.*``) -> the flat layout."""
    flat_of = {own: flat for flat, own in names.items() if own != flat}
    if not any(k in flat_of for k in sd):
        return sd
    return {flat_of.get(k, k): v for k, v in sd.items()}


def _match(sd: dict[str, Tensor], own: dict[str, Tensor], report: LoadReport, resizable_fc: bool) -> dict[str, Tensor]:
    """:func:`match_state_dict` with a ResNet's rules: keys of unbuilt stages, of ``fc`` on a feature extractor and
    norm statistics for GroupNorm are dropped; ``conv1.weight`` of other input channels is adapted; a classifier's
    ``fc`` of another ``num_classes`` keeps its initialisation."""
    built_layers = {k.split(".", 1)[0] for k in own}

    def drop(key: str) -> bool:
        head = key.split(".", 1)[0]
        return ((head.startswith("layer") or head == "fc") and head not in built_layers) or key.endswith(_NORM_STATS)

    def reshape(key: str, value: Tensor, target: Tensor) -> tuple[Tensor | None, str] | None:
        if (key == "conv1.weight" and value.ndim == 4 and value.shape[1] > 0 and value.shape[0] == target.shape[0]
                and value.shape[2:] == target.shape[2:]):  # no input channel: nothing to adapt from
            return (adapt_input_conv(value.to(target.dtype), target.shape[1]),
                    f"{value.shape[1]} -> {target.shape[1]} input channels")
        if key.startswith("fc.") and resizable_fc:
            return None, f"num_classes {value.shape[0]} -> {target.shape[0]}, re-initialised"
        return None

    accepted = match_state_dict(sd, own, report, drop=drop, reshape=reshape)
    report.missing = [k for k in own if k not in accepted and not k.endswith("num_batches_tracked")
                      and not (k.startswith("fc.") and any(d.startswith(k) for d in report.dropped))]
    return accepted


def load_weights(
    model: nn.Module,
    weights: str | os.PathLike | Mapping[str, Tensor],
    *,
    arch: str | None = None,
    strict: bool = True,
    progress: bool = True,
) -> LoadReport:
    """Load ``weights`` (tag, file path or state dict) into ``model`` and return a :class:`LoadReport`.

    Keys the model does not have are dropped when they belong to a part it does not build (the classifier ``fc``
    for a feature extractor, stages after the last requested feature, norm statistics for GroupNorm); anything else
    unexpected or missing is an error when ``strict``. A shape mismatch is always an error naming the first key and
    both shapes, except ``conv1.weight`` for another ``in_channels`` (adapted) and ``fc`` of a classifier with
    another ``num_classes`` (dropped, left at its initialisation). The model is matched in torchvision's flat layout
    (:func:`torchvision_key_map`), and the report names keys in that layout; a state dict of the model's own layout
    (a saved classifier's ``backbone.*``) loads too.
    """
    arch = arch or getattr(model, "name", "model")

    def tag_url(tag: str) -> tuple[str, str]:
        entry = resolve_weights(arch, tag)
        return entry.url, f"{arch} {entry.name}"

    source, raw = read_weights(weights, tag_url, progress)
    names = torchvision_key_map(model)
    state = model.state_dict()
    own = {flat: state[key] for flat, key in names.items()}
    sd = _from_own_layout(raw, names)
    own_layout = sd is not raw  # a state dict saved from a model of this kind (a classifier's backbone.*)
    sd, layout, outside = _strip_prefix(sd, set(own))
    layout = "resdense" if own_layout and layout == "torchvision" else layout
    report = LoadReport(source=source, layout=layout, dropped=list(outside))
    accepted = _match(sd, own, report, resizable_fc=hasattr(model, "num_classes"))
    report.refuse_mismatched(arch)
    if layout == "unknown" or not accepted:
        raise WeightsError(f"{source}: no key matches {arch} (first key in the file: {next(iter(sd))!r})")
    if strict:
        report.refuse_missing_or_unexpected(arch)
    model.load_state_dict({names[k]: v for k, v in accepted.items()}, strict=False)
    report.loaded = list(accepted)
    log.info("%s: %s", arch, report)
    return report


def load_pretrained(model: nn.Module, weights: str | os.PathLike | Mapping[str, Tensor] | None, *, arch: str) -> nn.Module:
    """Give ``model`` its ``pretrained_cfg`` (ImageNet ``mean`` / ``std``, the ``weights`` source, torchvision's
    ``categories`` for a tag) and, with ``weights``, load them (:func:`load_weights`) and keep ``model.load_report``.
    What the builders of a ResNet and of a classifier share; returns ``model``."""
    model.pretrained_cfg = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "weights": None, "categories": None}
    if weights is not None:
        model.load_report = load_weights(model, weights, arch=arch)
        model.pretrained_cfg["weights"] = model.load_report.source
        if isinstance(weights, str) and not os.path.exists(weights) and model.load_report.source.startswith("http"):
            model.pretrained_cfg["categories"] = resolve_weights(arch, weights).meta.get("categories")
    return model
