"""Recipes: every shipped YAML validates; unknown keys and wrong types name the file and the key."""

from __future__ import annotations

import pytest
import yaml

import resdense.config as resdense_config
from resdense.config import Config, TrainConfig, check_type, list_configs
from resdense.engine import load_config
from resdense.errors import ConfigError

from .recipes import det_recipe, seg_recipe, write

SHIPPED = ["demo_shapes_unet_r18", "demo_shapes_frcnn_r18_fpn", "demo_shapes_maskrcnn_r18_fpn", "unet_r34_membrane",
           "unet_r50_camvid", "fasterrcnn_r18_fpn_raccoon", "fasterrcnn_r50_fpn_coco", "maskrcnn_r50_fpn_coco",
           "classifier_r50_finetune_imagefolder", "unet_r18_membrane_cpu", "unet_r18_camvid_cpu",
           "fasterrcnn_r18_fpn_raccoon_cpu"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipes_validate(name):
    cfg = load_config(name)
    assert isinstance(cfg, Config) and cfg.name == name
    assert cfg.task in ("segmentation", "detection", "classification")
    assert name in {p.stem for p in list_configs()}


def test_unknown_key_names_file_and_key(tmp_path):
    raw = seg_recipe(tmp_path / "shapes", tmp_path / "run")
    raw["train"]["lrr"] = 0.1
    path = write(raw, tmp_path / "x.yaml")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "'train.lrr'" in msg and "did you mean 'lr'" in msg and "\n" not in msg


@pytest.mark.parametrize("section,key", [("model", "decoder_chanels"), ("data", "trian"), ("eval", "evry_iters")])
def test_unknown_keys_in_every_section(tmp_path, section, key):
    raw = seg_recipe(tmp_path / "shapes", tmp_path / "run")
    raw[section][key] = 1
    path = write(raw, tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match=rf"bad\.yaml: unknown key '{section}\.{key}'"):
        load_config(path)


def test_unknown_dataset_argument(tmp_path):
    raw = seg_recipe(tmp_path / "shapes", tmp_path / "run")
    raw["data"]["train_transforms"]["flip"] = 0.5
    with pytest.raises(ConfigError, match=r"unknown key 'data\.train_transforms\.flip' \(did you mean 'hflip'"):
        load_config(write(raw, tmp_path / "bad.yaml"))


def test_instance_masks_dataset_section(tmp_path):
    raw = det_recipe(tmp_path / "shapes", tmp_path / "run")
    folder = {"images_dir": "leftImg8bit", "masks_dir": "gtFine", "classes": {24: "person", 26: "car"},
              "id_rule": "cityscapes", "mask_suffix": "_gtFine_instanceIds"}
    raw["data"] = {"dataset": "instance_masks", "train": folder, "val": folder}
    assert load_config(write(raw, tmp_path / "ok.yaml")).data["train"]["classes"] == {24: "person", 26: "car"}
    raw["data"]["train"] = {**folder, "mask_sufix": "_mask"}
    with pytest.raises(ConfigError, match=r"unknown key 'data\.train\.mask_sufix' \(did you mean 'mask_suffix'"):
        load_config(write(raw, tmp_path / "typo.yaml"))
    raw["task"], raw["model"] = "segmentation", seg_recipe(tmp_path, tmp_path)["model"]
    raw["data"]["train"] = folder
    with pytest.raises(ConfigError, match=r"data\.dataset = 'instance_masks' serves detection, not segmentation"):
        load_config(write(raw, tmp_path / "seg.yaml"))


def test_set_overrides_are_type_checked(tmp_path):
    path = write(seg_recipe(tmp_path / "shapes", tmp_path / "run"), tmp_path / "x.yaml")
    cfg = load_config(path, ["train.lr=0.02", "train.grad_clip=null", "model.decoder_channels=[8, 8, 8, 8, 8]"])
    assert cfg.train.lr == 0.02 and cfg.train.grad_clip is None and cfg.model["decoder_channels"] == [8] * 5
    with pytest.raises(ConfigError, match=r"train\.lr = 'fast' is not a float"):
        load_config(path, ["train.lr=fast"])
    with pytest.raises(ConfigError, match=r"train\.iterations = 2\.5 is not a"):
        load_config(path, ["train.iterations=2.5"])
    with pytest.raises(ConfigError, match=r"model\.num_classes = 'four' is not an int"):
        load_config(path, ["model.num_classes=four"])
    with pytest.raises(ConfigError, match=r"train\.betas = \[0\.9\] is not a tuple\[float, float\]$"):
        load_config(path, ["train.betas=[0.9]"])
    with pytest.raises(ConfigError, match=r"unknown key 'train\.bogus'"):
        load_config(path, ["train.bogus=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(path, ["train.lr"])


def test_values_outside_choices(tmp_path):
    path = write(seg_recipe(tmp_path / "shapes", tmp_path / "run"), tmp_path / "x.yaml")
    with pytest.raises(ConfigError, match=r"train\.optimizer = 'adam' is not one of 'adamw', 'sgd'"):
        load_config(path, ["train.optimizer=adam"])
    with pytest.raises(ConfigError, match=r"model\.arch = 'unett'"):
        load_config(path, ["model.arch=unett"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: line \d+ not valid YAML"):
        load_config(bad)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(write(seg_recipe(tmp_path / "shapes", tmp_path / "run"), tmp_path / "x.yaml"))
    plain = cfg.to_dict()
    again = load_config(write(yaml.safe_load(yaml.safe_dump(plain)), tmp_path / "y.yaml"))
    assert again.to_dict() == {**plain, "name": plain["name"]}
    assert again.train == cfg.train


def test_check_type():
    assert check_type(3, float) and not check_type(True, int) and not check_type("3", int)
    assert check_type([1, 2], tuple[int, int]) and not check_type([1], tuple[int, int])
    assert check_type(None, int | None) and check_type([0.1, 0.2], list[float])
    with pytest.raises(ConfigError, match="set either 'epochs' or 'iterations'"):
        TrainConfig()


def test_detector_arguments_refused_at_build_name_the_recipe():
    from resdense.engine.build import build_model

    for override, message in [("model.fpn_channels=0", "fpn_channels=0 must be a positive int"),
                              ("model.anchor_sizes=[[32], [64]]", "anchor_sizes has 2 levels but the pyramid has 4")]:
        cfg = load_config("demo_shapes_frcnn_r18_fpn", [override, "model.num_classes=4", "model.weights_backbone=null"])
        with pytest.raises(ConfigError) as err:
            build_model(cfg.model, cfg.source)
        msg = str(err.value)
        assert msg.startswith(f"{cfg.source}: model: faster_rcnn: ") or msg.startswith(f"{cfg.source}: model: build_detector: ")
        assert message in msg and "\n" not in msg


def test_detector_anchor_forms_that_build_detector_takes_pass_the_recipe_check():
    for anchors in ("model.aspect_ratios=1.0", "model.anchor_sizes=[16, 32.0, [64], 128, 256]",
                    "model.aspect_ratios=[[0.5, 1.0], [1.0, 2.0], [0.5, 2.0], [1.0, 3.0], [1.0, 2.0]]"):
        load_config("demo_shapes_frcnn_r18_fpn", [anchors, "model.returned_layers=[1, 2, 3, 4]"])  # validates the model section against build_detector
    with pytest.raises(ConfigError, match=r"model\.aspect_ratios = \[\[1\.0\], 'wide'\] is not a Sequence"):
        load_config("demo_shapes_frcnn_r18_fpn", ["model.aspect_ratios=[[1.0], 'wide']"])


def test_config_alone_reads_a_recipe_and_the_engine_checks_model_and_data(tmp_path):
    # resdense.config imports no model code (tests/test_architecture.py), so the keys of model/data, which are the
    # constructors' arguments, are checked one floor up: the engine's load_config, which the CLI and the runners use.
    from resdense import config as pure
    from resdense.engine import check_config, config_from_dict
    from resdense.engine.runner import as_config  # what run_training / run_evaluation do with a Config object

    raw = seg_recipe(tmp_path / "shapes", tmp_path / "run")
    raw["model"]["decoder_chanels"] = 1
    path = write(raw, tmp_path / "bad.yaml")
    cfg = pure.parse_recipe(path)
    assert cfg.model["decoder_chanels"] == 1 and cfg.task == "segmentation"
    for check in (lambda: check_config(cfg), lambda: as_config(cfg), lambda: config_from_dict(raw, str(path)),
                  lambda: load_config(path)):
        with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'model\.decoder_chanels'"):
            check()
    with pytest.raises(ConfigError, match=r"train\.lr = 'fast' is not a float"):
        pure.parse_recipe(path, ["train.lr=fast"])


def test_recipe_detector_archs_are_build_detectors_kinds():
    from resdense.heads import KINDS
    from resdense.registry import ARCHITECTURES

    DETECTOR_ARCHS = tuple(n for n, e in ARCHITECTURES.items() if e.task == "detection")
    assert DETECTOR_ARCHS == KINDS and all(ARCHITECTURES.get(k).task == "detection" for k in KINDS)


def test_recipes_are_found_from_any_folder_and_the_working_directory_comes_first(tmp_path, monkeypatch):
    from resdense.recipes import find_config, shipped_recipes_dir

    monkeypatch.chdir(tmp_path)  # no configs/ here: names resolve to the shipped recipes (resdense.configs)
    assert set(SHIPPED) <= {p.stem for p in list_configs()}
    assert find_config("demo_shapes_unet_r18") == shipped_recipes_dir() / "demo_shapes_unet_r18.yaml"
    (tmp_path / "configs").mkdir()
    own = write(seg_recipe(tmp_path / "shapes", tmp_path / "run"), tmp_path / "configs" / "demo_shapes_unet_r18.yaml")
    assert find_config("demo_shapes_unet_r18").resolve() == own.resolve()
    assert load_config("demo_shapes_unet_r18").model["decoder_channels"] == [16] * 5


def test_a_recipes_split_files_are_read_beside_it_and_set_values_from_the_working_directory(tmp_path):
    raw = seg_recipe(tmp_path / "shapes", tmp_path / "run")
    raw["data"]["train"] = {"split": "splits/train.txt"}
    raw["data"]["val"] = {"split": str(tmp_path / "abs.txt")}
    (tmp_path / "recipes").mkdir()
    path = write(raw, tmp_path / "recipes" / "x.yaml")
    cfg = resdense_config.parse_recipe(path)
    assert cfg.data["train"]["split"] == str(tmp_path / "recipes" / "splits" / "train.txt")
    assert cfg.data["val"]["split"] == str(tmp_path / "abs.txt")  # absolute: as written
    cfg = resdense_config.parse_recipe(path, ["data.train.split=mine.txt"])
    assert cfg.data["train"]["split"] == "mine.txt"  # typed on the command line: the working directory's


def test_a_value_map_keeps_its_integer_keys_through_checkpoints_and_saved_recipes(tmp_path):
    """The recipe a checkpoint stores rebuilds its datasets: mask values stay ints (they were once made strings,
    which MaskDataset then refused when a checkpoint's recipe was loaded)."""
    raw = seg_recipe(tmp_path / "shapes", tmp_path / "run")
    raw["data"]["train"] = {"value_map": {0: 0, 255: 1}}
    cfg = resdense_config.parse_config(raw)
    assert cfg.to_dict()["data"]["train"]["value_map"] == {0: 0, 255: 1}
    resdense_config.save_config(cfg, tmp_path / "saved.yaml")
    again = resdense_config.parse_recipe(tmp_path / "saved.yaml")
    assert again.data["train"]["value_map"] == {0: 0, 255: 1}
