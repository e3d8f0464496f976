"""layout.py: the files stages hand each other (split JSON, classInd.txt, frames folders, manifest.json)."""

from __future__ import annotations

import json

import pytest

from layout import (
    UNLABELLED,
    check_split_entries,
    count_frames,
    format_class_index,
    frame_name,
    frame_path,
    manifest_videos,
    read_class_index,
    read_class_names,
    read_frame_settings,
    read_manifest,
    read_split_json,
    split_id_of,
    split_json_name,
    split_json_path,
    video_frames,
    write_class_index,
)
from tests.conftest import SHARED_DATA
from utils import BadInputError

# ----------------------------------------------------------------------------------------------- split JSON


def test_bad_split_json_names_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    for content in ('{"video_name": "x"}', '[{"video_name": "x"}]', "[", '[{"video_name": "x", "label_idx": -1}]'):
        bad.write_text(content)
        with pytest.raises(BadInputError, match="bad.json"):
            read_split_json(bad)


def test_unlabelled_records_only_where_asked_for(tmp_path):
    """label_idx -1 (layout.UNLABELLED: an official test split without labels) passes only for stage 2, which
    embeds such splits; training and evaluation readers keep refusing it."""
    path = tmp_path / "test.json"
    path.write_text(json.dumps([{"video_name": "a", "label_idx": UNLABELLED}, {"video_name": "b", "label_idx": 0}]))
    assert [r["label_idx"] for r in read_split_json(path, unlabelled=True)] == [-1, 0]
    with pytest.raises(BadInputError, match="label_idx -1, not an int >= 0 \\(an unlabelled video"):
        read_split_json(path)
    path.write_text(json.dumps([{"video_name": "a", "label_idx": -2}]))
    with pytest.raises(BadInputError, match="label_idx -2"):
        read_split_json(path, unlabelled=True)


@pytest.mark.parametrize(
    ("records", "why"),
    [
        ([{"video_name": "a", "label_idx": 0}, {"video_name": "a", "label_idx": 1}], "'a' appears twice"),
        ([{"video_name": "a", "label_idx": True}], "label_idx True"),
        ([{"video_name": "a", "label_idx": 1.0}], "label_idx 1.0"),
        ([{"video_name": 3, "label_idx": 0}], "lacks video_name"),
        ([], "lists no videos"),
        ({"video_name": "a", "label_idx": 0}, "must hold a list"),
    ],
)
def test_one_validation_for_every_reader(records, why):
    """Stage 2 and the e2e route read split files through this one check (the e2e route once took repeats and
    boolean labels)."""
    with pytest.raises(BadInputError, match=why):
        check_split_entries(records, "split JSON x.json")


def test_split_json_names_and_extra_keys(tmp_path):
    records = [{"video_name": "v_A_g01_c01", "label_idx": 0, "group": "g01", "num_frames": 3}]
    (tmp_path / split_json_name("train")).write_text(json.dumps(records))
    assert split_json_path(tmp_path, "train") == tmp_path / "train_ucf101.json"
    assert read_split_json(split_json_path(tmp_path, "train")) == records  # extra keys are fine and kept
    (tmp_path / "val.json").write_text(json.dumps(records))
    assert split_json_path(tmp_path, "val") == tmp_path / "val.json"
    with pytest.raises(BadInputError, match="no test split"):
        split_json_path(tmp_path, "test")


# ----------------------------------------------------------------------------------------------- classInd.txt


@pytest.mark.needs_shared_data
def test_class_index_round_trip(tmp_path):
    names = read_class_index(SHARED_DATA / "ucf101_splits" / "classInd.txt")
    (tmp_path / "classInd.txt").write_text(format_class_index(names))
    assert read_class_index(tmp_path / "classInd.txt") == names
    (tmp_path / "bad.txt").write_text("1 A\n3 B\n")
    with pytest.raises(BadInputError, match="expected 2"):
        read_class_index(tmp_path / "bad.txt")


def test_class_index_names_may_hold_spaces_but_not_be_missing(tmp_path):
    """Stage 1 writes the user's class folder names as they are; every later stage reads them back through here."""
    path = tmp_path / "classInd.txt"
    write_class_index(path, ["Biking", "Walk [odd]", "high  jump"])
    assert path.read_text() == "1 Biking\n2 Walk [odd]\n3 high  jump\n"
    assert read_class_index(path) == ["Biking", "Walk [odd]", "high  jump"]
    path.write_text("1 Biking\n2\n")
    with pytest.raises(BadInputError, match="line 2"):
        read_class_index(path)


def test_class_names_from_class_index_or_from_the_entries(tmp_path, caplog):
    entries = [{"video_name": "a", "label_idx": 0, "class_name": "Walk"}, {"video_name": "b", "label_idx": 2}]
    assert read_class_names(tmp_path, entries) == ["Walk", "class_1", "class_2"]
    assert "classInd.txt" in caplog.text  # the fallback is said
    write_class_index(tmp_path / "classInd.txt", ["Run", "Walk", "Jump"])
    assert read_class_names(tmp_path, entries) == ["Run", "Walk", "Jump"]
    write_class_index(tmp_path / "classInd.txt", ["Run", "Walk"])
    with pytest.raises(BadInputError, match=r"label_idx outside the 2 classes of .*classInd.txt, first 'b'"):
        read_class_names(tmp_path, entries)


# ----------------------------------------------------------------------------------------------- frames folders


def test_frame_names_count_from_one():
    assert frame_name(0) == "frame_000001.jpg" and frame_name(999_999) == "frame_1000000.jpg"
    assert frame_path("F", "v", 4).as_posix() == "F/v/frame_000005.jpg"


def test_frames_are_frame_files_up_to_the_highest_number(tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    assert count_frames(folder) == 0 and count_frames(tmp_path / "missing") == 0
    for k in (0, 1, 3):  # frame_000003.jpg missing: a gap, i.e. a missing frame, not the end of the video
        (folder / frame_name(k)).write_bytes(b"x")
    for stray in ("frame_7.jpg", "frame_0000009.jpg", "frame_000009.png", "FRAME_000009.JPG", "notes.txt", ".x"):
        (folder / stray).write_bytes(b"x")
    (folder / frame_name(8)).mkdir()  # a folder is not a frame, whatever its name
    assert count_frames(folder) == 4


def test_video_frames_says_why_a_video_has_none(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "img_0001.jpg").write_bytes(b"x")
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / frame_name(0)).write_bytes(b"x")
    assert video_frames(tmp_path, "ok") == (1, None)
    assert video_frames(tmp_path, "missing") == (0, "no frames folder")
    assert video_frames(tmp_path, "empty") == (0, "frames folder holds no frame_NNNNNN.jpg files")
    assert video_frames(tmp_path, "../ok") == (0, "video_name is not a plain folder name")
    # issue 11 item 5: a folder that ends elsewhere than its manifest record says is unusable for both routes
    assert video_frames(tmp_path, "ok", {"num_frames": 1, "source_size": 9}) == (1, None)
    assert video_frames(tmp_path, "ok", {"num_frames": 3}) == (
        0, "the folder holds 1 frame(s) but stage 1's manifest records 3; rerun prepare_ucf101.py")


# ----------------------------------------------------------------------------------------------- manifest.json


def test_frame_settings_from_the_manifest(tmp_path, caplog):
    assert read_manifest(tmp_path) is None
    assert manifest_videos(tmp_path) == {}
    assert read_frame_settings(tmp_path) == {"fps": None, "frame_size": None, "jpeg_quality": None}
    assert "manifest.json" in caplog.text
    (tmp_path / "manifest.json").write_text(json.dumps({"fps": 2, "frame_size": 64, "jpeg_quality": 90,
                                                        "videos": {"v": {"num_frames": 3}}}))
    assert read_frame_settings(tmp_path) == {"fps": 2.0, "frame_size": 64, "jpeg_quality": 90}
    assert read_manifest(tmp_path)["videos"]["v"]["num_frames"] == 3
    assert manifest_videos(tmp_path) == {"v": {"num_frames": 3}}
    (tmp_path / "manifest.json").write_text("[1, 2")
    with pytest.raises(BadInputError, match="manifest.json is not valid JSON"):
        read_frame_settings(tmp_path)
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(BadInputError, match="must hold a JSON object"):
        read_manifest(tmp_path)


def test_split_id_of_records():
    """The official split id stage 1 writes in each record: one value for a split, None for a random split."""
    assert split_id_of([{"video_name": "a", "split_id": 3}, {"video_name": "b", "split_id": 3}]) == 3
    assert split_id_of([{"video_name": "a"}]) is None and split_id_of([]) is None
    with pytest.raises(BadInputError, match="several official splits"):
        split_id_of([{"split_id": 1}, {"split_id": 2}], "x.json")
