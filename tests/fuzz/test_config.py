"""Fuzzing the readers of recipes and ``--set`` overrides (``resdense.engine.load_config``: ``recipes.read_yaml``,
``apply_overrides``, ``config.parse_config`` and the ``model`` / ``data`` checks against the constructors).

Arbitrary YAML trees, mutated shipped recipes, raw text and bytes, and arbitrary ``key=value`` strings must give
a valid :class:`~resdense.config.Config` or one line of ConfigError; a loaded recipe holds the values written (and
the overrides given), of the types its schema declares.
"""

from __future__ import annotations

import dataclasses
import math
import typing

import yaml
from hypothesis import given
from hypothesis import strategies as st

from resdense.config import SECTIONS, TASKS, EvalConfig, TrainConfig, check_type, list_configs
from resdense.engine import load_config
from resdense.errors import ResdenseError

from ._fuzz import case, fuzz, outcome, scratch
from .strategies import SCALARS, mutate, values

RECIPES = {p.stem: yaml.safe_load(p.read_text()) for p in list_configs()}
TRAIN_KEYS = [f.name for f in dataclasses.fields(TrainConfig)]
EVAL_KEYS = [f.name for f in dataclasses.fields(EvalConfig)]
MODEL_KEYS = ["arch", "backbone", "num_classes", "decoder_channels", "weights", "norm", "in_channels", "kind"]
DATA_KEYS = ["dataset", "train", "val", "shapes", "train_transforms", "val_transforms", "allow_overlap", "split",
             "images_dir", "masks_dir", "ann_file", "classes", "size", "hflip"]
KEYS = [*SECTIONS, *TRAIN_KEYS, *EVAL_KEYS, *MODEL_KEYS, *DATA_KEYS]
ARCHS = st.sampled_from(["unet", "smp.Unet", "smp.Nope", "classifier", "faster_rcnn", "mask_rcnn", "retinanet", "fcos",
                         "nope"])


def _check_loaded(cfg, written: dict | None = None) -> None:
    """A loaded recipe: a known task, and train / eval fields of their declared types (and finite where numbers),
    equal to what was written."""
    assert cfg.task in TASKS
    for section, cls in (("train", TrainConfig), ("eval", EvalConfig)):
        hints = typing.get_type_hints(cls)
        obj = getattr(cfg, section)
        for f in dataclasses.fields(cls):
            value = getattr(obj, f.name)
            assert check_type(list(value) if isinstance(value, tuple) else value, hints[f.name]), (section, f.name)
            for v in value if isinstance(value, list | tuple) else [value]:
                assert not isinstance(v, float) or math.isfinite(v), f"{section}.{f.name} = {value!r} was accepted"
        given_ = (written or {}).get(section)
        for key, v in (given_.items() if isinstance(given_, dict) else []):
            got = getattr(obj, key)
            assert (list(got) if isinstance(got, tuple) else got) == v, (section, key)


def _load(root, content, overrides=()) -> object:
    path = root / "recipe.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(content, allow_unicode=True), encoding="utf-8")
    return outcome(load_config, path, overrides)


SECTION_VALUES = {
    "train": st.dictionaries(st.sampled_from(TRAIN_KEYS), values(max_leaves=3), max_size=5),
    "eval": st.dictionaries(st.sampled_from(EVAL_KEYS), values(max_leaves=3), max_size=4),
    "model": st.dictionaries(st.sampled_from(MODEL_KEYS), st.one_of(ARCHS, values(max_leaves=3)), max_size=4),
    "data": st.dictionaries(st.sampled_from(DATA_KEYS), values(DATA_KEYS, max_leaves=4), max_size=4),
}


@st.composite
def recipe_trees(draw):
    """Recipe-shaped trees: known sections (or not), each a mapping of known keys (or not) to anything."""
    tree = {}
    for section in draw(st.lists(st.sampled_from([*SECTIONS, "trian", "Model"]), unique=True, max_size=6)):
        strategy = SECTION_VALUES.get(section, st.one_of(st.sampled_from(TASKS), SCALARS))
        tree[section] = draw(st.one_of(strategy, strategy, SCALARS) if section in SECTION_VALUES else strategy)
    if isinstance(tree.get("model"), dict) and draw(st.booleans()):
        tree["model"]["arch"] = draw(ARCHS)
    return tree


@fuzz(400)
@given(tree=recipe_trees())
def test_recipe_trees_load_or_are_refused(fuzz_dir, tree):
    case("recipes")
    with scratch(fuzz_dir) as root:
        cfg = _load(root, tree)
        if not isinstance(cfg, ResdenseError):
            _check_loaded(cfg, tree)


@fuzz(400)
@given(name=st.sampled_from(sorted(RECIPES)), data=st.data())
def test_mutated_shipped_recipes_load_or_are_refused(fuzz_dir, name, data):
    case("recipes")
    tree = mutate(data.draw, RECIPES[name], values(KEYS))
    with scratch(fuzz_dir) as root:
        cfg = _load(root, tree)
        if not isinstance(cfg, ResdenseError):
            _check_loaded(cfg, tree)


@fuzz(300)
@given(content=st.one_of(st.text(max_size=200), st.binary(max_size=200),
                         st.sampled_from(["", "\x00", "[", "a: [", "- 1\n- 2", "!!python/object:os.system {}",
                                          "a: &x [*x]", "\ufeffmodel: {arch: unet}", "model: {arch: [unet]}",
                                          "{" * 60 + "}" * 60, "model:\n\tarch: unet", "\x85", "a: b\x07"])))
def test_raw_recipe_files_load_or_are_refused(fuzz_dir, content):
    case("recipes")
    with scratch(fuzz_dir) as root:
        cfg = _load(root, content, ["train.lr=0.1"] if len(content) % 2 else [])
        if not isinstance(cfg, ResdenseError):
            _check_loaded(cfg)


DOTTED = st.one_of(st.builds(lambda k: f"train.{k}", st.sampled_from(TRAIN_KEYS)),
                   st.builds(lambda k: f"eval.{k}", st.sampled_from(EVAL_KEYS)),
                   st.builds(lambda k: f"model.{k}", st.sampled_from(MODEL_KEYS)),
                   st.builds(lambda k: f"data.{k}", st.sampled_from(DATA_KEYS)),
                   st.sampled_from([*SECTIONS, "data.train.split", "data.val.classes", "train.lr.x", "..", ".a",
                                    "a.", " train.lr ", "x.y.z"]),
                   st.text(max_size=10))
YAML_TEXT = st.one_of(values(max_leaves=3).map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()),
                      st.text(max_size=12), st.sampled_from(["", "null", ".nan", "-.inf", "1e400", "[", "{a", "'",
                                                            "*x", "!!binary AAA", "0x1f", "1_000", "~", "a\nb"]))
OVERRIDES = st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", DOTTED, YAML_TEXT), st.text(max_size=20)),
                     min_size=1, max_size=4)


@fuzz(500)
@given(name=st.sampled_from(sorted(RECIPES)), overrides=OVERRIDES)
def test_set_overrides_apply_or_are_refused(name, overrides):
    case("--set overrides")
    cfg = outcome(load_config, name, overrides)
    if isinstance(cfg, ResdenseError):
        return
    _check_loaded(cfg)
    last = {}
    for item in overrides:
        key, text = item.split("=", 1)
        last[key.strip()] = text
    for key, text in last.items():
        section, _, field = key.partition(".")
        try:
            want = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            want = text
        if not field or "." in field:
            continue  # a whole section, or deeper than the checks below
        if section in ("train", "eval"):
            got = getattr(getattr(cfg, section), field)
            assert (list(got) if isinstance(got, tuple) else got) == want or want != want, (key, got, want)
        elif section == "model" and not any(k.startswith(f"{key}.") for k in last):
            assert cfg.model[field] == want or want != want, (key, cfg.model[field], want)
