"""Official UCF-101 / HMDB51 split files and group-aware random splits, on the real split files."""

from __future__ import annotations

import random
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from readers import detect_split_format, read_official_split
from splits import SplitEntry, group_split, match_entries, name_key, video_group
from tests.conftest import SHARED_DATA
from utils import BadInputError

UCF = SHARED_DATA / "ucf101_splits"
HMDB = SHARED_DATA / "hmdb51_splits"


@dataclass(frozen=True)
class Item:
    class_name: str
    stem: str
    group: str


def items_of(entries: list[SplitEntry]) -> list[Item]:
    return [Item(e.class_name, e.stem, video_group(e.stem)) for e in entries]


def test_video_group():
    assert video_group("v_HandStandPushups_g08_c01") == video_group("v_HandstandPushups_g08_c04")
    assert video_group("v_ApplyEyeMakeup_g08_c01") != video_group("v_ApplyEyeMakeup_g09_c01")
    assert video_group("v_ApplyEyeMakeup_g08_c01") != video_group("v_Archery_g08_c01")
    hmdb = "Brushing_Her_Hair__[_NEW_AUDIO_]_UPDATED!!!!_brush_hair_h_cm_np1_le_goo_{}"
    assert video_group(hmdb.format(0)) == video_group(hmdb.format(2))
    assert video_group("holiday clip (1) & more!") is None


@pytest.mark.needs_shared_data
def test_detect_format(tmp_path):
    assert detect_split_format(UCF) == "ucf101"
    assert detect_split_format(HMDB) == "hmdb51"
    with pytest.raises(BadInputError, match="neither"):
        detect_split_format(tmp_path)
    with pytest.raises(BadInputError, match="not found"):
        detect_split_format(tmp_path / "absent")


@pytest.mark.parametrize(("split_id", "n_train", "n_test"), [(1, 9537, 3783), (2, 9586, 3734), (3, 9624, 3696)])
@pytest.mark.needs_shared_data
def test_ucf101_counts_labels_and_groups(split_id, n_train, n_test):
    split = read_official_split(UCF, split_id)
    assert split.format == "ucf101"
    assert (len(split.train), len(split.test)) == (n_train, n_test)
    assert len(split.class_names) == 101
    assert split.class_names[0] == "ApplyEyeMakeup" and split.class_names[-1] == "YoYo"
    # the official label column agrees with classInd order (0-based here)
    raw = (UCF / f"trainlist{split_id:02d}.txt").read_text().split()
    official_label = {Path(p).stem: int(n) - 1 for p, n in zip(raw[::2], raw[1::2], strict=True)}
    labels = {e.stem: split.class_names.index(e.class_name) for e in split.train}
    assert labels == official_label
    # no test group in train; the documented test groups per split
    train_groups = {video_group(e.stem) for e in split.train}
    test_groups = {video_group(e.stem) for e in split.test}
    assert not train_groups & test_groups
    lo = 7 * (split_id - 1) + 1
    assert {int(re.search(r"_g(\d+)_", e.stem)[1]) for e in split.test} == set(range(lo, lo + 7))
    # every clip once over train + test
    assert len({e.stem.casefold() for e in split.train + split.test}) == 13320


@pytest.mark.needs_shared_data
def test_ucf101_case_mismatch_in_file_names():
    split = read_official_split(UCF, 1)
    entry = next(e for e in split.train if e.stem == "v_HandStandPushups_g08_c01")
    assert entry.class_name == "HandstandPushups"
    assert split.class_names.index("HandstandPushups") == 36


@pytest.mark.parametrize("split_id", [1, 2, 3])
@pytest.mark.needs_shared_data
def test_hmdb51_counts_labels_and_groups(split_id):
    split = read_official_split(HMDB, split_id)
    assert split.format == "hmdb51"
    assert (len(split.train), len(split.test)) == (3570, 1530)
    listed = [line.strip() for line in (HMDB / "class_list.txt").read_text().splitlines() if line.strip()]
    assert split.class_names == listed and len(listed) == 51
    per_class = Counter(e.class_name for e in split.train)
    assert set(per_class) == set(listed) and set(per_class.values()) == {70}
    train_groups = {video_group(e.stem) for e in split.train}
    test_groups = {video_group(e.stem) for e in split.test}
    assert not train_groups & test_groups
    assert len(train_groups) < len(split.train)  # clips really share sources
    # entries keep the odd characters of HMDB names
    assert any("[" in e.file_name or "!" in e.file_name for e in split.train + split.test)


@pytest.mark.needs_shared_data
def test_hmdb51_without_class_list_uses_sorted_names(tmp_path):
    for p in HMDB.iterdir():
        if p.name.endswith("_split1.txt"):
            (tmp_path / p.name).write_bytes(p.read_bytes())
    split = read_official_split(tmp_path, 1)
    assert split.class_names == sorted(split.class_names)
    assert len(split.train) == 3570


def test_match_entries_case_insensitive_and_missing():
    @dataclass(frozen=True)
    class Found:
        class_name: str
        stem: str

    found = [Found("HandstandPushups", "v_HandstandPushups_g08_c01"), Found("Other", "unique_clip")]
    entries = [
        SplitEntry("HandstandPushups", "v_HandStandPushups_g08_c01.avi", "trainlist01.txt"),
        SplitEntry("Elsewhere", "unique_clip.avi", "trainlist01.txt"),  # unique stem: found in another folder
        SplitEntry("HandstandPushups", "v_HandStandPushups_g09_c01.avi", "trainlist01.txt"),
    ]
    pairs, missing = match_entries(entries, found)
    assert [(e.stem, f.stem) for e, f in pairs] == [
        ("v_HandStandPushups_g08_c01", "v_HandstandPushups_g08_c01"),
        ("unique_clip", "unique_clip"),
    ]
    assert [e.stem for e in missing] == ["v_HandStandPushups_g09_c01"]


@pytest.mark.needs_shared_data
def test_random_split_on_ucf101_never_splits_a_group():
    items = items_of(read_official_split(UCF, 1).train + read_official_split(UCF, 1).test)
    train, val = group_split(items, 0.8, seed=0)
    assert len(train) + len(val) == len(items)
    assert not {i.group for i in train} & {i.group for i in val}
    assert 0.75 < len(train) / len(items) < 0.85
    assert {i.class_name for i in train} == {i.class_name for i in val}  # stratified: every class on both sides


def test_group_split_properties():
    rng = random.Random(1)
    items = [
        Item(f"c{c}", f"c{c}_g{g}_{i}", f"c{c}_g{g}")
        for c in range(5)
        for g in range(rng.randint(2, 12))
        for i in range(rng.randint(1, 6))
    ] + [Item("solo", f"solo{i}", f"solo{i}") for i in range(10)]
    a1, b1 = group_split(items, 0.7, seed=3)
    shuffled = items[:]
    rng.shuffle(shuffled)
    a2, b2 = group_split(shuffled, 0.7, seed=3)
    assert sorted(x.stem for x in a1) == sorted(x.stem for x in a2)  # order of input does not matter
    assert not {x.group for x in a1} & {x.group for x in b1}
    for c in {x.class_name for x in items}:
        assert any(x.class_name == c for x in a1) and any(x.class_name == c for x in b1)
    a3, _ = group_split(items, 0.7, seed=4)
    assert {x.stem for x in a3} != {x.stem for x in a1}  # the seed matters
    all_a, all_b = group_split(items, 1.0, seed=0)
    assert len(all_a) == len(items) and not all_b
    with pytest.raises(BadInputError):
        group_split(items, 1.5, seed=0)


def _ucf_split(tmp_path: Path, train: list[str], test: list[str], classes: list[str]) -> Path:
    (tmp_path / "classInd.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(classes, 1)))
    (tmp_path / "trainlist01.txt").write_text("".join(f"{line}\n" for line in train))
    (tmp_path / "testlist01.txt").write_text("".join(f"{line}\n" for line in test))
    return tmp_path


def test_a_video_in_train_and_test_is_a_leak_naming_it(tmp_path):
    split_dir = _ucf_split(tmp_path, ["A/v_A_g01_c01.avi 1", "A/v_A_g02_c01.avi 1"],
                           ["A/V_A_G02_C01.avi", "A/v_A_g03_c01.avi"], ["A"])  # differs in case only
    with pytest.raises(BadInputError, match=r"1 video\(s\) are in both .*leak.*A/V_A_G02_C01.avi \(testlist01.txt\)"):
        read_official_split(split_dir, 1)


def test_a_video_listed_twice_is_refused_at_reading(tmp_path):
    split_dir = _ucf_split(tmp_path, ["A/v_A_g01_c01.avi 1"], ["A/v_A_g02_c01.avi", "A/v_A_g02_c01.avi"], ["A"])
    with pytest.raises(BadInputError, match=r"listed more than once in the test list: A/v_A_g02_c01.avi"):
        read_official_split(split_dir, 1)


def test_names_compare_after_nfc_normalisation(tmp_path):
    nfc, nfd = unicodedata.normalize("NFC", "Crème"), unicodedata.normalize("NFD", "Crème")
    assert name_key(nfc) == name_key(nfd) == name_key(nfc.upper())
    split_dir = _ucf_split(tmp_path, [f"{nfd}/v_{nfc}_g01_c01.avi 1"], [f"{nfc}/v_{nfd}_g02_c01.avi"], [nfc])
    split = read_official_split(split_dir, 1)
    assert [e.class_name for e in split.train + split.test] == [nfc, nfc]
    items = [Item(nfd, f"v_{nfd}_g01_c01", "g1"), Item(nfd, f"v_{nfc}_g02_c01", "g2")]
    pairs, missing = match_entries(split.train + split.test, items)
    assert not missing and [it.stem for _, it in pairs] == [f"v_{nfd}_g01_c01", f"v_{nfc}_g02_c01"]
