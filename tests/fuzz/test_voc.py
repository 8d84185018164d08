"""Fuzzing the reader of Pascal VOC XML folders (``VocDetection``, ``resdense data check``).

Valid generated folders are read and checked against what was generated (images, boxes, labels, difficult objects
as ignored regions); mutated ones (fields missing or holding odd text, unknown tags, truncated or corrupted bytes,
unknown encodings) must be read or refused in one line.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from resdense.data import VocDetection, check_path
from resdense.errors import ResdenseError

from ._fuzz import case, check_message, fuzz, outcome, scratch
from .strategies import ODD_STRINGS, damage, mutate, values

pytestmark = pytest.mark.filterwarnings("ignore::resdense.data.common.DataWarning")

# Characters XML 1.0 can carry and ``strip()`` keeps (class names and stems as users write them).
XML_CHARS = st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp", "Zs"), blacklist_characters="/\\\ufffe\uffff")
# Numbers as a VOC file may spell them, well or badly (unicode digits, exponents, signs, spaces, NaN).
NUMBER_TEXT = st.one_of(st.sampled_from(["²", "٣", "①", "12²", " 7 ", "0", "-3", "1e3", "3.0", "nan", "inf", "0x1f"]),
                        st.floats().map(str), st.integers(-(10**20), 10**20).map(str),
                        st.text(alphabet="0123456789²٣①.-+e _x", min_size=1, max_size=5))
VOC_KEYS = ["filename", "size", "width", "height", "object", "name", "bndbox", "xmin", "ymin", "xmax", "ymax",
            "difficult"]


def _xml(tree) -> str:
    """A nested dict as XML: dict values are elements, lists repeat their tag, anything else is text."""
    def element(tag, value) -> str:
        if isinstance(value, list):
            return "".join(element(tag, v) for v in value)
        inner = "".join(element(k, v) for k, v in value.items()) if isinstance(value, dict) else escape(str(value))
        return f"<{tag}>{inner}</{tag}>"
    return element("annotation", tree)


@st.composite
def voc_folders(draw):
    """``{stem: annotation tree}`` of a valid VOC folder, and the image size of each stem."""
    n = draw(st.integers(1, 3))
    stems = draw(st.lists(st.text(XML_CHARS, min_size=1, max_size=8).filter(lambda s: not s.startswith(".")),
                          min_size=n, max_size=n, unique_by=lambda s: s.lower()))
    names = draw(st.lists(st.text(XML_CHARS, min_size=1, max_size=6), min_size=1, max_size=3, unique=True))
    files, sizes = {}, {}
    for stem in stems:
        h, w = draw(st.integers(1, 16)), draw(st.integers(1, 16))
        sizes[stem] = (h, w)
        objects = []
        for _ in range(draw(st.integers(0, 4))):
            x0, y0 = draw(st.integers(1, w)), draw(st.integers(1, h))
            box = {"xmin": x0, "ymin": y0, "xmax": draw(st.integers(x0, w)), "ymax": draw(st.integers(y0, h))}
            obj = {"name": draw(st.sampled_from(names)), "bndbox": box}
            if draw(st.booleans()):
                obj["difficult"] = draw(st.sampled_from([0, 1]))
            objects.append(obj)
        tree = {"filename": draw(st.sampled_from([f"{stem}.png", "renamed.jpg"])), "object": objects}
        if draw(st.integers(0, 3)):
            tree["size"] = {"width": w, "height": h, "depth": 3}
        files[stem] = tree
    return files, sizes


def _write(root, files: dict, sizes: dict) -> tuple:
    images, anns = root / "JPEGImages", root / "Annotations"
    images.mkdir()
    anns.mkdir()
    for stem, content in files.items():
        h, w = sizes[stem]
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(images / f"{stem}.png", format="PNG")
        (anns / f"{stem}.xml").write_bytes(content if isinstance(content, bytes) else _xml(content).encode())
    return images, anns


@fuzz(200)
@given(generated=voc_folders())
def test_valid_voc_reads_what_was_written(fuzz_dir, generated):
    case("voc xml")
    files, sizes = generated
    with scratch(fuzz_dir) as root:
        images, anns = _write(root, files, sizes)
        ds = VocDetection(images, anns)
        order = sorted(files, key=lambda s: s + ".xml")
        classes = sorted({o["name"] for tree in files.values() for o in tree["object"]})
        assert ds.class_names == classes and len(ds) == len(files)
        for i, stem in enumerate(order):
            image, target = ds[i]
            assert tuple(image.shape[1:]) == sizes[stem]
            objs = [o for o in files[stem]["object"] if not o.get("difficult")]
            want = [[o["bndbox"]["xmin"] - 1, o["bndbox"]["ymin"] - 1, o["bndbox"]["xmax"], o["bndbox"]["ymax"]]
                    for o in objs]
            np.testing.assert_array_equal(target["boxes"].numpy(), np.array(want, np.float32).reshape(-1, 4))
            assert target["labels"].tolist() == [classes.index(o["name"]) + 1 for o in objs]
        crowd = sum(bool(o.get("difficult")) for tree in files.values() for o in tree["object"])
        assert sum(a["iscrowd"] for a in ds.coco.dataset["annotations"]) == crowd
        assert check_path(root).ok


@st.composite
def mutated_voc(draw):
    files, sizes = draw(voc_folders())
    stem = draw(st.sampled_from(sorted(files)))
    kind = draw(st.sampled_from(["tree", "tree", "text", "bytes", "encoding"]))
    if kind == "tree":
        files[stem] = _xml(mutate(draw, files[stem], values(VOC_KEYS))).encode()
    elif kind == "text":  # fields hold odd text: unicode digits, NaN, 1e999, empty, negative...
        tree = files[stem]
        tree.setdefault("size", {"width": sizes[stem][1], "height": sizes[stem][0]})
        fields = [(tree["size"], "width"), (tree["size"], "height"), (tree, "filename")]
        for obj in tree["object"]:
            fields += [(obj, "name"), (obj, "difficult")] + [(obj["bndbox"], k) for k in obj["bndbox"]]
        for node, key in fields:
            if draw(st.integers(0, 3)) == 0:
                node[key] = draw(st.one_of(NUMBER_TEXT, NUMBER_TEXT, ODD_STRINGS, st.text(max_size=6)))
    elif kind == "bytes":
        files[stem] = damage(draw, _xml(files[stem]).encode())
    else:
        encoding = draw(st.sampled_from(["utf-16", "latin-1", "ascii", "nonsense", "utf-8"]))
        files[stem] = f'<?xml version="1.0" encoding="{encoding}"?>{_xml(files[stem])}'.encode()
    return files, sizes


@fuzz(400)
@given(generated=mutated_voc())
def test_mutated_voc_is_read_or_refused(fuzz_dir, generated):
    case("voc xml")
    files, sizes = generated
    with scratch(fuzz_dir) as root:
        images, anns = _write(root, files, sizes)
        ds = outcome(VocDetection, images, anns)
        if not isinstance(ds, ResdenseError):
            for i in range(len(ds)):
                item = outcome(ds.__getitem__, i)
                if isinstance(item, ResdenseError):
                    continue
                image, target = item
                h, w = image.shape[1:]
                boxes, labels = target["boxes"].numpy(), target["labels"].numpy()
                assert np.isfinite(boxes).all() and (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all()
                assert (boxes[:, 3] <= h).all() and (boxes[:, :2] < boxes[:, 2:]).all()
                assert ((labels >= 1) & (labels <= ds.num_classes)).all()
        report = outcome(check_path, root)
        if not isinstance(report, ResdenseError):
            for line in report.problems + report.warnings + report.checked:
                check_message(line)
