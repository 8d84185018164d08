"""Fuzzing the reader of split files (``split=`` of every dataset: ``split_names.read_split`` / ``select_split``).

Valid generated splits (names as file names, stems or paths, in any order, with blank lines, comments, trailing
spaces, CRLF line ends, a byte-order mark) select exactly the samples they name; arbitrary text, bytes and lists
select samples consistently with their names or are refused in one line.
"""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from resdense.data.split_names import name_keys, read_split, select_split
from resdense.errors import ResdenseError

from ._fuzz import case, fuzz, outcome, scratch

# Characters a sample name may hold and a line-based file can carry (no whitespace, no line breaks, no '#').
NAME_CHARS = st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), blacklist_characters="/\\#")
PARTS = st.text(NAME_CHARS, min_size=1, max_size=6).filter(lambda s: s not in (".", ".."))


@st.composite
def samples(draw) -> list[str]:
    """Relative paths of a dataset's samples: ``stem.ext`` or ``folder/stem.ext``, unique."""
    paths = draw(st.lists(st.tuples(st.sampled_from(["", "a/", "b/"]), PARTS, st.sampled_from([".png", ".jpg", ""])),
                          min_size=1, max_size=6))
    return list(dict.fromkeys(f"{d}{stem}{ext}" for d, stem, ext in paths))


def _owners(keys: list[tuple[str, ...]]) -> dict[str, set[int]]:
    owners: dict[str, set[int]] = {}
    for i, ks in enumerate(keys):
        for k in ks:
            owners.setdefault(k, set()).add(i)
    return owners


@st.composite
def valid_splits(draw):
    names = draw(samples())
    keys = [name_keys(n) for n in names]
    owners = _owners(keys)
    # A sample all of whose names fit another too ('x' beside 'x.png') cannot be named alone: not chosen.
    unique = {i: [k for k in ks if owners[k] == {i}] for i, ks in enumerate(keys)}
    nameable = [i for i, ks in unique.items() if ks]
    assume(nameable)
    chosen = draw(st.lists(st.sampled_from(nameable), min_size=1, unique=True))
    lines = []
    for i in chosen:
        name = draw(st.sampled_from(unique[i]))
        lines.append(draw(st.sampled_from(["", " ", "\t"])) + name + draw(st.sampled_from(["", "  ", " # a comment",
                                                                                           "\t#x"])))
    for _ in range(draw(st.integers(0, 3))):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(["", "   ", "# comment", " #", "#a b"])))
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    text = draw(st.sampled_from(["", "\ufeff"])) + eol.join(lines) + draw(st.sampled_from(["", eol]))
    return names, sorted(chosen), text


@fuzz(300)
@given(generated=valid_splits())
def test_valid_split_files_select_what_they_name(fuzz_dir, generated):
    case("split files")
    names, chosen, text = generated
    keys = [name_keys(n) for n in names]
    with scratch(fuzz_dir) as root:
        path = root / "train.txt"
        path.write_text(text, encoding="utf-8", newline="")
        assert select_split(keys, path, "the dataset") == chosen
        assert select_split(keys, [names[i] for i in reversed(chosen)], "the dataset") == chosen


TEXT = st.one_of(st.text(max_size=80),
                 st.lists(st.one_of(PARTS, st.sampled_from(["", "#", " # x", "\ufeff", "\r", "a b", "\x00", "é"])),
                          max_size=8).map("\n".join))


@fuzz(500)
@given(names=samples(), content=st.one_of(TEXT, st.binary(max_size=80)), data=st.data())
def test_arbitrary_split_files_are_read_or_refused(fuzz_dir, names, content, data):
    case("split files")
    keys = [name_keys(n) for n in names]
    with scratch(fuzz_dir) as root:
        path = root / "split.txt"
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8", newline="")
        else:
            path.write_bytes(content)
        split = data.draw(st.sampled_from([path, str(path), root, root / "missing.txt"]))
        got = outcome(select_split, keys, split, "the dataset")
        if not isinstance(got, ResdenseError):
            listed, _ = read_split(split)
            assert got == sorted(set(got)) and all(0 <= i < len(names) for i in got)
            assert len(got) == len(listed)  # one sample per name, one name per sample


@fuzz(300)
@given(names=samples(), split=st.one_of(st.lists(st.one_of(st.text(max_size=8), PARTS), max_size=6),
                                        st.lists(st.one_of(st.none(), st.integers(), st.binary(max_size=4)),
                                                 min_size=1, max_size=3),
                                        st.none(), st.integers(), st.binary(max_size=8), st.tuples(PARTS)))
def test_split_lists_and_odd_objects_are_read_or_refused(names, split):
    case("split files")
    keys = [name_keys(n) for n in names]
    got = outcome(select_split, keys, split, "the dataset")
    if not isinstance(got, ResdenseError):
        assert got == sorted(set(got)) and len(got) == len({s.strip() for s in split if s.strip()})
