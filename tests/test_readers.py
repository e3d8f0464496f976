"""Dataset readers (readers/): each format's files, written here from its published field names with their real
quirks, read into records; detection, refusal of wrong or mixed layouts, and a new format added through the
registry running stage 1."""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import prepare_ucf101
import readers
from readers import READERS, ReadOptions, read_dataset, select_reader
from readers.base import Dataset, Reader, Record
from tests.conftest import ROOT, SHARED_DATA, VIDEOS
from utils import BadInputError, read_json
from video import FrameSpan


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def frames(folder: Path, n: int = 3) -> None:
    for i in range(1, n + 1):
        touch(folder / f"{i:05d}.jpg")


# ----- fixtures in each format's published layout -------------------------------------------------------------

SSV2_CLASSES = {"Holding something next to something": "1", "Putting something on a surface": "0",
                "Pushing something from left to right": "2"}


def write_ssv2(root: Path, videos: bool = True) -> tuple[Path, Path]:
    ann, media = root / "ssv2", root / "20bn-something-something-v2"
    ann.mkdir(parents=True)
    (ann / "something-something-v2-labels.json").write_text(json.dumps(SSV2_CLASSES))  # indices are strings
    train = [{"id": "78687", "label": "holding potato next to vicks vaporub bottle",
              "template": "Holding [something] next to [something]", "placeholders": ["potato", "vicks bottle"]},
             {"id": "42326", "label": "putting a cup on a surface", "template": "Putting [something] on a surface",
              "placeholders": ["a cup"]},
             {"id": "3", "label": "pushing x from left to right", "template": "Pushing [something] from left to right",
              "placeholders": ["x"]},
             {"id": "99", "label": "?", "template": "Juggling [something]", "placeholders": ["x"]}]
    val = [{"id": "74225", "label": "putting pen on a surface", "template": "Putting [something] on a surface",
            "placeholders": ["pen"]}]
    test = [{"id": "1420"}, {"id": "5555"}]
    for side, items in (("train", train), ("validation", val), ("test", test)):
        (ann / f"something-something-v2-{side}.json").write_text(json.dumps(items))
    if videos:
        for vid in ("78687", "42326", "3", "99", "74225", "1420", "5555"):
            touch(media / f"{vid}.webm")
    return ann, media


JESTER_CLASSES = ["Doing other things", "Drumming Fingers", "Swiping Left"]


def write_jester(root: Path) -> tuple[Path, Path]:
    ann, media = root / "jester", root / "20bn-jester-v1"
    ann.mkdir(parents=True)
    (ann / "jester-v1-labels.csv").write_text("\n".join(JESTER_CLASSES) + "\n")
    (ann / "jester-v1-train.csv").write_text("34870;Drumming Fingers\n56557;Swiping Left\n1;Doing other things\n")
    (ann / "jester-v1-validation.csv").write_text("9223;Drumming Fingers\n")
    (ann / "jester-v1-test.csv").write_text("12\n13\n")
    for vid in ("34870", "56557", "1", "9223", "12", "13"):
        frames(media / vid)
    return ann, media


def write_diving48(root: Path) -> tuple[Path, Path]:
    ann, media = root / "diving48", root / "rgb"
    ann.mkdir(parents=True)
    vocab = [["Back", "15som", "05Twis", "FREE"], ["Forward", "25som", "NoTwis", "PIKE"]]
    (ann / "Diving48_vocab.json").write_text(json.dumps(vocab))
    train = [{"vid_name": "-mmq0PT-u8k_00155", "label": 0, "start_frame": 0, "end_frame": 184},
             {"vid_name": "-mmq0PT-u8k_00156", "label": 1, "start_frame": 0, "end_frame": 90},
             {"vid_name": "abc_00001", "label": 1, "start_frame": 12, "end_frame": 70}]
    test = [{"vid_name": "zzz_00003", "label": 0, "start_frame": 0, "end_frame": 60}]
    (ann / "Diving48_V2_train.json").write_text(json.dumps(train))
    (ann / "Diving48_V2_test.json").write_text(json.dumps(test))
    for item in train + test:
        touch(media / f"{item['vid_name']}.mp4")
    return ann, media


def write_kinetics(root: Path) -> tuple[Path, Path]:
    ann, media = root / "kinetics400", root / "k400"
    ann.mkdir(parents=True)
    header = ["label", "youtube_id", "time_start", "time_end", "split", "is_cc"]
    rows = [["abseiling", "--07WQ2iBlw", "1", "11", "train", "0"],
            ["abseiling", "gone_video1", "0", "10", "train", "0"],   # deleted from YouTube: no clip on disk
            ["air drumming", "-VtLx-mcPds", "23", "33", "train", "0"],
            ["air drumming", "-VtLx-mcPds", "40", "50", "train", "0"],  # a second clip of one YouTube video
            ["zumba", "gone_video2", "3", "13", "train", "0"]]            # every clip of a class gone
    with open(ann / "train.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    with open(ann / "validate.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([header, ["abseiling", "0wR5jVB-WPk", "17", "27", "val", "0"]])
    with open(ann / "test.csv", "w", newline="") as fh:  # test without labels: no label column
        csv.writer(fh).writerows([["youtube_id", "time_start", "time_end", "split"], ["0ABC", "5", "15", "test"]])
    touch(media / "train" / "abseiling" / "--07WQ2iBlw_000001_000011.mp4")       # per-class folders
    touch(media / "train" / "air_drumming" / "-VtLx-mcPds_000023_000033.mp4")    # class folder spelt otherwise
    touch(media / "-VtLx-mcPds_000040_000050.mp4")                                # flat
    touch(media / "val" / "0wR5jVB-WPk_000017_000027.mp4")
    touch(media / "test" / "0ABC_000005_000015.mp4")
    return ann, media


WRITERS = {"ssv2": write_ssv2, "jester": write_jester, "diving48": write_diving48, "kinetics": write_kinetics}


def opts(ann: Path | None, media: Path, **kw) -> ReadOptions:
    return ReadOptions(media, ann, **kw)


def by_split(ds: Dataset) -> dict[str | None, list[Record]]:
    out: dict[str | None, list[Record]] = {}
    for r in ds.records:
        out.setdefault(r.split, []).append(r)
    return out


# ----- detection and refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_each_format_is_detected_from_its_own_files(tmp_path, name):
    ann, media = WRITERS[name](tmp_path)
    assert select_reader(opts(ann, media)).name == name


@pytest.mark.needs_shared_data
def test_official_split_folders_and_plain_folders_are_detected(tmp_path):
    assert select_reader(opts(SHARED_DATA / "ucf101_splits", tmp_path)).name == "ucf101"
    assert select_reader(opts(SHARED_DATA / "hmdb51_splits", tmp_path)).name == "hmdb51"
    assert select_reader(opts(None, tmp_path)).name == "folder"


def test_mixed_layout_is_refused_in_one_line_naming_the_folder(tmp_path):
    ann, _ = write_ssv2(tmp_path)
    jester_ann, _ = write_jester(tmp_path)
    (ann / "jester-v1-labels.csv").write_bytes((jester_ann / "jester-v1-labels.csv").read_bytes())
    with pytest.raises(BadInputError) as err:
        select_reader(opts(ann, tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and str(ann) in msg and "ssv2, jester" in msg and "--dataset NAME" in msg
    assert select_reader(opts(ann, tmp_path), "jester").name == "jester"  # --dataset says which


def test_unknown_folder_says_what_each_format_expects(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(BadInputError) as err:
        select_reader(opts(tmp_path, tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path) in msg
    assert "something-something-v2-" in msg and "jester-v1-" in msg and "Diving48_vocab.json" in msg


def test_a_wrong_file_in_a_detected_layout_names_the_file_and_what_was_expected(tmp_path):
    ann, media = write_ssv2(tmp_path)
    (ann / "something-something-v2-train.json").write_text(json.dumps([{"id": "1", "label": "x"}]))
    with pytest.raises(BadInputError, match=r"something-something-v2-train.json: none of its 1 entry can be read; "
                                            r"the first: something-something-v2-train.json\[0\]: not an object with "
                                            r"id, template"):
        read_dataset(opts(ann, media))
    ann, media = write_jester(tmp_path / "j")
    (ann / "jester-v1-train.csv").write_text("34870,Drumming Fingers\n56557,Swiping Left\n")  # commas throughout
    with pytest.raises(BadInputError, match=r"jester-v1-train.csv: none of its 2 entries can be read; the first: "
                                            r"jester-v1-train.csv:1: not `id;label` \(semicolon"):
        read_dataset(opts(ann, media))


def _damage(name: str, ann: Path) -> list[str]:
    """Append entries a damaged copy holds to one of the format's files; returns the entries' places."""
    if name == "ssv2":
        path = ann / "something-something-v2-train.json"
        items = json.loads(path.read_text())
        path.write_text(json.dumps([*items, {"id": "7"}, "junk"]))  # an item without its template, not an object
        return [f"{path.name}[{len(items)}]", f"{path.name}[{len(items) + 1}]"]
    if name == "diving48":
        path = ann / "Diving48_V2_train.json"
        items = json.loads(path.read_text())
        path.write_text(json.dumps([*items, {"vid_name": "cut_00001", "label": 0}]))
        return [f"{path.name}[{len(items)}]"]
    if name == "jester":
        path = ann / "jester-v1-train.csv"
        lines = path.read_text().splitlines()
        path.write_text("\n".join([*lines, "777", "778;Swiping Left;extra"]) + "\n")
        return [f"{path.name}:{len(lines) + 1}", f"{path.name}:{len(lines) + 2}"]
    path = ann / "train.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, "abseiling,cutshort,1", "abseiling,xyz,one,11,train,0",
                               "abseiling,xyz,1,11,holdout,0"]) + "\n")
    return [f"{path.name}:{len(lines) + k}" for k in (1, 2, 3)]


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_a_damaged_annotation_entry_is_listed_and_the_rest_is_read(tmp_path, name):
    """A cut line, a missing key, a time that is not a number or an unknown split fails that entry alone: it is
    listed with its file and place, and every readable entry of the file gives the same records as before."""
    ann, media = WRITERS[name](tmp_path)
    before = read_dataset(opts(ann, media))
    places = _damage(name, ann)
    after = read_dataset(opts(ann, media))
    assert after.records == before.records and after.class_names == before.class_names
    new = [f for f in after.failures if f not in before.failures]
    # each names its place: as the failure's "file", or, where the entry names its clip, first in its reason
    assert [f["file"] if f["file"] in places else f["reason"].split(": ")[0] for f in new] == places, new
    assert all("\n" not in f["reason"] and f["reason"] for f in new)


def test_dataset_flag_checks_what_it_needs(tmp_path):
    with pytest.raises(BadInputError, match="--dataset ssv2 reads annotation files"):
        select_reader(opts(None, tmp_path), "ssv2")
    with pytest.raises(BadInputError, match="--dataset folder takes no --split_dir"):
        select_reader(opts(tmp_path, tmp_path), "folder")


# ----- each format's records -------------------------------------------------------------------------------------


def test_ssv2_classes_come_from_templates_and_string_indices(tmp_path):
    ann, media = write_ssv2(tmp_path)
    ds = read_dataset(opts(ann, media))
    assert ds.class_names == ["Putting something on a surface", "Holding something next to something",
                              "Pushing something from left to right"]  # in the order of the string indices
    sides = by_split(ds)
    assert {r.name: r.label for r in sides["train"]} == {
        "78687": "Holding something next to something", "42326": "Putting something on a surface",
        "3": "Pushing something from left to right"}
    assert [(r.path, r.label) for r in sides["val"]] == [("74225.webm", "Putting something on a surface")]
    assert sorted(r.name for r in sides["test"]) == ["1420", "5555"] and all(r.label is None for r in sides["test"])
    assert ds.failures == [{"file": "99.webm", "reason": "something-something-v2-train.json[3]: template "
                            "'Juggling [something]' is none of the 3 classes of something-something-v2-labels.json"}]


@pytest.mark.parametrize("name, gone", [("ssv2", "42326.webm"), ("jester", "56557"), ("diving48", "abc_00001.mp4")])
def test_a_partial_copy_of_a_published_dataset_lists_what_is_missing(tmp_path, name, gone):
    ann, media = WRITERS[name](tmp_path)
    path = media / gone
    path.rename(path.with_name("elsewhere" + path.suffix))
    ds = read_dataset(opts(ann, media))
    assert gone in [f["file"] for f in ds.failures] and gone not in [r.path for r in ds.records]


def test_your_own_file_naming_a_missing_video_is_refused_unless_allowed(tmp_path):
    touch(tmp_path / "v" / "a.mp4")
    (tmp_path / "mine.csv").write_text("path,label\na.mp4,A\nb.mp4,B\n")
    with pytest.raises(BadInputError, match=r"1 video\(s\) named .* b.mp4 .*--allow_missing"):
        read_dataset(opts(tmp_path / "mine.csv", tmp_path / "v"))
    ds = read_dataset(opts(tmp_path / "mine.csv", tmp_path / "v", allow_missing=True))
    assert ds.failures == [{"file": "b.mp4", "reason": "named in mine.csv:3 but not found"}]


def test_jester_reads_semicolon_lines_over_frame_folders_at_12_fps(tmp_path):
    ann, media = write_jester(tmp_path)
    (media / "56557").rename(media / "moved")  # a frame folder that is gone
    ds = read_dataset(opts(ann, media))
    assert ds.source_fps == 12.0 and ds.class_names == JESTER_CLASSES
    sides = by_split(ds)
    assert {r.path: r.label for r in sides["train"]} == {"34870": "Drumming Fingers", "1": "Doing other things"}
    assert [r.path for r in sides["val"]] == ["9223"] and [r.label for r in sides["test"]] == [None, None]
    assert ds.failures == [{"file": "56557", "reason": "named in jester-v1-train.csv:2 but not found"}]


def test_diving48_labels_index_the_vocabulary_and_clips_of_one_video_share_a_group(tmp_path):
    ann, media = write_diving48(tmp_path)
    ds = read_dataset(opts(ann, media))
    assert ds.class_names == ["Back_15som_05Twis_FREE", "Forward_25som_NoTwis_PIKE"]
    rec = {r.name: r for r in ds.records}
    assert rec["-mmq0PT-u8k_00155"].label == "Back_15som_05Twis_FREE"
    assert rec["abc_00001"].segment == FrameSpan(12, 70)  # frame numbers, cut exactly by stage 1's decoder
    assert rec["-mmq0PT-u8k_00155"].segment == FrameSpan(0, 184)
    assert rec["-mmq0PT-u8k_00155"].group == rec["-mmq0PT-u8k_00156"].group != rec["abc_00001"].group
    assert rec["zzz_00003"].split == "test" and {r.split for r in ds.records} == {"train", "test"}  # no val


def test_diving48_frame_range_that_is_not_two_frame_numbers_is_that_entrys_failure(tmp_path):
    ann, media = write_diving48(tmp_path)
    items = json.loads((ann / "Diving48_V2_test.json").read_text())
    items.append({"vid_name": "bad_00001", "label": 1, "start_frame": 40, "end_frame": 10})
    (ann / "Diving48_V2_test.json").write_text(json.dumps(items))
    touch(media / "bad_00001.mp4")
    ds = read_dataset(opts(ann, media))
    assert "bad_00001" not in {r.name for r in ds.records}
    assert ds.failures == [{"file": "bad_00001.mp4", "reason": "Diving48_V2_test.json[1]: start_frame 40 and end_frame "
                            "10 are not frame numbers 0 <= start <= end"}]


def test_diving48_start_and_end_frame_cut_stage1_to_exactly_those_frames(tmp_path):
    """Real decoding: numbered 10 fps clips; start_frame 8 / end_frame 21 at -fps 5 keeps frames 8, 10, .., 20 at
    0.8 .. 2.0 s (the interval frames 8..21 are shown), recorded as a frame span in the manifest and split JSON."""
    import cv2

    from tests.synthetic import frame_number, write_numbered_video

    ann, media = write_diving48(tmp_path)
    train = [{"vid_name": "yt0_00001", "label": 0, "start_frame": 8, "end_frame": 21},
             {"vid_name": "yt1_00001", "label": 1, "start_frame": 0, "end_frame": 500}]  # past the end: whole clip
    (ann / "Diving48_V2_train.json").write_text(json.dumps(train))
    (ann / "Diving48_V2_test.json").write_text(json.dumps([{"vid_name": "yt2_00001", "label": 0, "start_frame": 3,
                                                            "end_frame": 5}]))
    for f in media.iterdir():
        f.unlink()
    for item in (*train, {"vid_name": "yt2_00001"}):
        write_numbered_video(media / f"{item['vid_name']}.mp4", 30, fps=10)
    out = tmp_path / "out"
    assert stage1("-v", media, "-o", out, "--split_dir", ann, "-fps", "5", "--val_ratio", "0") == 0
    manifest = read_json(out / "frames" / "manifest.json")["videos"]
    cut = manifest["yt0_00001"]
    assert cut["segment"] == {"frames": [8, 21]}
    assert cut["timestamps"] == pytest.approx([0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0])
    numbers = [frame_number(cv2.imread(str(p))) for p in sorted((out / "frames" / "yt0_00001").glob("*.jpg"))]
    assert numbers == [8, 10, 12, 14, 16, 18, 20]
    assert manifest["yt1_00001"]["num_frames"] == 15  # 3 s at 5 fps
    assert manifest["yt2_00001"]["timestamps"] == pytest.approx([0.3, 0.5])
    records = {r["video_name"]: r for r in read_json(out / "train_ucf101.json")}
    assert records["yt0_00001"]["segment"] == {"frames": [8, 21]}
    assert stage1("-v", media, "-o", out, "--split_dir", ann, "-fps", "5", "--val_ratio", "0") == 0  # resumes

    # prepare_data.py --videos_dir cuts the same frames, records the same span, and a rerun finds them done
    direct_args = [sys.executable, str(ROOT / "prepare_data.py"), "--videos_dir", str(media), "--split_dir", str(ann),
                   "-fps", "5", "--val_ratio", "0", "-o", str(tmp_path / "direct"), "-nw", "0", "-m", "resnet18",
                   "--weights", "none", "--image_size", "32", "-bs", "1"]
    for rerun in (False, True):
        proc = subprocess.run(direct_args, cwd=ROOT, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert ("3 video(s) already embedded" in proc.stderr) == rerun, proc.stderr[-3000:]
    assert (tmp_path / "direct" / "manifest.json").read_bytes() == (out / "frames" / "manifest.json").read_bytes()


def test_kinetics_missing_clips_are_listed_never_fatal(tmp_path):
    ann, media = write_kinetics(tmp_path)
    ds = read_dataset(opts(ann, media))
    assert ds.class_names == ["abseiling", "air drumming", "zumba"]  # zumba keeps its index with no clip left
    assert sorted(f["file"] for f in ds.failures) == ["gone_video1_000000_000010.mp4", "gone_video2_000003_000013.mp4"]
    rec = {r.name: r for r in ds.records}
    assert rec["--07WQ2iBlw_000001_000011"].path == "train/abseiling/--07WQ2iBlw_000001_000011.mp4"
    assert rec["-VtLx-mcPds_000023_000033"].path == "train/air_drumming/-VtLx-mcPds_000023_000033.mp4"
    assert rec["-VtLx-mcPds_000040_000050"].path == "-VtLx-mcPds_000040_000050.mp4"
    assert rec["-VtLx-mcPds_000023_000033"].group == rec["-VtLx-mcPds_000040_000050"].group
    assert rec["0wR5jVB-WPk_000017_000027"].split == "val"
    assert rec["0ABC_000005_000015"].split == "test" and rec["0ABC_000005_000015"].label is None


def test_generic_csv_with_segments_splits_and_an_unlabelled_video(tmp_path):
    media = tmp_path / "videos"
    for name in ("long.mp4", "b.mp4", "c.mp4"):
        touch(media / name)
    ann = tmp_path / "mine.csv"
    ann.write_text("path,label,start,end,split\nlong.mp4,Jump,0,4.5,train\nlong.mp4,Fall,4.5,9,train\n"
                   "b.mp4,Jump,,,validation\nc.mp4,,,,test\n")
    ds = read_dataset(opts(ann, media))
    assert ds.format == "generic"
    rec = {r.name: r for r in ds.records}
    assert rec["long_0-4.5s"].segment == (0.0, 4.5) and rec["long_4.5-9s"].label == "Fall"
    assert rec["long_0-4.5s"].group == rec["long_4.5-9s"].group  # segments of one video: one side of a split
    assert rec["b"].split == "val" and rec["c"].label is None and rec["c"].split == "test"


def test_generic_json_and_headerless_csv(tmp_path):
    media = tmp_path / "v"
    touch(media / "a.mp4")
    touch(media / "sub" / "b.avi")
    js = tmp_path / "x.json"
    js.write_text(json.dumps([{"path": "a.mp4", "label": "A"}, {"path": "sub/b.avi", "label": "B", "start": 1,
                                                                 "end": 2}]))
    assert [(r.path, r.segment) for r in read_dataset(opts(js, media)).records] == [("a.mp4", None),
                                                                                   ("sub/b.avi", (1.0, 2.0))]
    plain = tmp_path / "x.csv"
    plain.write_text("a.mp4,A\nsub/b.avi,B,1,2\n")
    assert [r.label for r in read_dataset(opts(plain, media)).records] == ["A", "B"]


@pytest.mark.parametrize("body, message", [
    ("path,label,start\na.mp4,A,1\n", "give both start and end"),
    ("path,label,start,end\na.mp4,A,3,2\n", "segment end 2.0 must come after its start 3.0"),
    ("path,label,split\na.mp4,,train\n", "an unlabelled video can only be in the test split"),
    ("path,label,split\na.mp4,A,train\na.mp4,A,test\n", r"a.mp4 is listed twice \(mine.csv:2 and mine.csv:3\)"),
    ("path,label,speed\na.mp4,A,1\n", "header 'path,label,speed' must name path,label"),
])
def test_generic_bad_lines_name_the_file_and_line(tmp_path, body, message):
    touch(tmp_path / "v" / "a.mp4")
    (tmp_path / "mine.csv").write_text(body)
    with pytest.raises(BadInputError, match=message):
        read_dataset(opts(tmp_path / "mine.csv", tmp_path / "v"))


@pytest.mark.needs_shared_data
def test_ucf101_reader_maps_train_and_test_lists_to_records(tmp_path):
    for rel in ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
                "YoYo/v_YoYo_g25_c05.avi"):
        touch(tmp_path / rel)
    ds = read_dataset(opts(SHARED_DATA / "ucf101_splits", tmp_path, allow_missing=True))
    assert ds.format == "ucf101" and ds.split_id == 1 and len(ds.class_names) == 101
    assert {(r.name, r.split, r.label, r.group) for r in ds.records} == {
        ("v_ApplyEyeMakeup_g08_c01", "train", "ApplyEyeMakeup", "v_applyeyemakeup_g08"),
        ("v_ApplyEyeMakeup_g01_c01", "test", "ApplyEyeMakeup", "v_applyeyemakeup_g01"),
        ("v_YoYo_g25_c05", "train", "YoYo", "v_yoyo_g25")}


# ----- the extension point ---------------------------------------------------------------------------------------


def _toy_read(options: ReadOptions) -> Dataset:
    """A format of its own: `list.txt` lines `<file> <label> <train|test>` over a flat folder."""
    from readers.base import Entry, build_records

    assert options.annotations is not None
    entries = [Entry(f, label, f"list.txt:{n}", split=side)
               for n, (f, label, side) in enumerate((ln.split() for ln in
                                                     (options.annotations / "list.txt").read_text().splitlines()), 1)]
    records, failures = build_records(entries, options)
    return Dataset("toy", records, None, failures)


@pytest.mark.needs_shared_data
def test_a_new_format_is_one_reader_and_one_registry_line(tmp_path, monkeypatch):
    media, ann = tmp_path / "flat", tmp_path / "ann"
    media.mkdir()
    ann.mkdir()
    for name in ("bikes.mp4", "carphone_pristine.mp4"):
        (media / name).symlink_to(VIDEOS / name)
    (ann / "list.txt").write_text("bikes.mp4 Ride train\ncarphone_pristine.mp4 Talk test\n")
    toy = Reader("toy", "list.txt", lambda o: o.annotations is not None and (o.annotations / "list.txt").is_file(),
                 _toy_read)
    monkeypatch.setitem(readers.READERS, "toy", toy)  # the one registry line
    out = tmp_path / "out"
    args = prepare_ucf101.get_args_parser().parse_args(
        ["-v", str(media), "-o", str(out), "--split_dir", str(ann), "-fps", "1", "--frame_size", "24",
         "--workers", "1", "--val_ratio", "0"])
    assert prepare_ucf101.main(args) == 0
    train, test = read_json(out / "train_ucf101.json"), read_json(out / "test_ucf101.json")
    assert [(r["video_name"], r["class_name"], r["label_idx"], r["num_frames"]) for r in train] == [
        ("bikes", "Ride", 0, 10)]
    assert [(r["video_name"], r["class_name"], r["num_frames"]) for r in test] == [("carphone_pristine", "Talk", 5)]  # 4.004 s
    assert (out / "classInd.txt").read_text() == "1 Ride\n2 Talk\n"


def test_every_reader_has_a_name_description_and_detector():
    for name, reader in READERS.items():
        assert reader.name == name and reader.description and callable(reader.detect) and callable(reader.read)
    assert list(READERS)[0] == "folder"
    assert isinstance(prepare_ucf101.get_args_parser().parse_args(["-v", "x", "-o", "y", "--dataset", "kinetics"]),
                      argparse.Namespace)


# ----- through stage 1 (and stage 2 for an unlabelled split) ---------------------------------------------------


def stage1(*argv: str | Path) -> int:
    return prepare_ucf101.main(prepare_ucf101.get_args_parser().parse_args([*map(str, argv), "--workers", "1"]))


@pytest.mark.needs_shared_data
def test_ssv2_through_stage1_keeps_the_official_val_and_an_unlabelled_test(tmp_path):
    ann, media = write_ssv2(tmp_path, videos=False)
    media.mkdir()
    clips = {"78687": "carphone_pristine.mp4", "42326": "bikes.mp4", "3": "carphone_pristine.mp4",
             "74225": "carphone_pristine.mp4", "1420": "carphone_pristine.mp4"}  # 99 and 5555 are not on disk
    for vid, clip in clips.items():
        (media / f"{vid}.webm").symlink_to(VIDEOS / clip)
    out = tmp_path / "out"
    assert stage1("-v", media, "-o", out, "--split_dir", ann, "-fps", "1", "--frame_size", "24") == 0
    assert (out / "classInd.txt").read_text().splitlines() == [
        "1 Putting something on a surface", "2 Holding something next to something",
        "3 Pushing something from left to right"]
    train, val, test = (read_json(out / f"{s}_ucf101.json") for s in ("train", "val", "test"))
    assert [(r["video_name"], r["label_idx"]) for r in train] == [("42326", 0), ("78687", 1), ("3", 2)]
    assert [r["video_name"] for r in val] == ["74225"]  # the official validation list, not a carve of train
    assert [(r["video_name"], r["label_idx"], "class_name" in r) for r in test] == [("1420", -1, False)]
    failed = sorted(f["file"] for f in read_json(out / "failed_videos.json"))
    assert failed == ["5555.webm", "99.webm"]


@pytest.mark.slow  # stage 1 and stage 2 (a backbone) in process
def test_jester_frames_through_stage1_and_an_unlabelled_test_split_through_stage2(tmp_path):
    import numpy as np

    import prepare_data

    ann, media, _ = _jester_media(tmp_path)  # real frames: 18 at 12 fps (1.5 s), a moving bar
    out = tmp_path / "out"
    assert stage1("-v", media, "-o", out, "--split_dir", ann, "-fps", "4") == 0  # 12 fps from the format
    manifest = read_json(out / "frames" / "manifest.json")
    assert manifest["source_fps"] == 12.0 and manifest["videos"]["12"]["num_frames"] == 6
    test = read_json(out / "test_ucf101.json")
    assert {r["label_idx"] for r in test} == {-1}
    emb = tmp_path / "emb"
    args = prepare_data.get_args_parser().parse_args(
        ["-s", "test", "-f", str(out / "frames"), "-j", str(out / "test_ucf101.json"), "-o", str(emb),
         "-m", "resnet18", "--weights", "none", "--image_size", "32", "-bs", "4", "-nw", "0", "-g", "0"])
    assert prepare_data.main(args) in (0, None)
    info = read_json(emb / "test.json")
    assert [(r["video_name"], r["label_idx"], r["video_length"]) for r in info["data"]] == [("12", -1, 6),
                                                                                           ("13", -1, 6)]
    assert np.load(emb / "test.npy", mmap_mode="r").shape[:2] == (2, 6)


@pytest.mark.needs_shared_data
def test_kinetics_through_stage1_lists_gone_clips_and_fails_only_with_strict(tmp_path):
    ann, media = write_kinetics(tmp_path)
    for clip in media.rglob("*.mp4"):
        clip.unlink()
        clip.symlink_to(VIDEOS / "carphone_pristine.mp4")
    out = tmp_path / "out"
    common = ["-v", media, "-o", out, "--split_dir", ann, "-fps", "1", "--frame_size", "24"]
    assert stage1(*common) == 0
    assert sorted(f["file"] for f in read_json(out / "failed_videos.json")) == [
        "gone_video1_000000_000010.mp4", "gone_video2_000003_000013.mp4"]
    assert (out / "classInd.txt").read_text() == "1 abseiling\n2 air drumming\n3 zumba\n"
    train = read_json(out / "train_ucf101.json") + read_json(out / "val_ucf101.json")
    assert len(train) == 4 and [r["label_idx"] for r in read_json(out / "test_ucf101.json")] == [-1]
    assert stage1(*common, "--strict") == 1  # the same run, with the gone clips made fatal


@pytest.mark.needs_shared_data
def test_diving48_through_stage1_carves_val_from_train_by_youtube_video(tmp_path):
    ann, media = write_diving48(tmp_path)
    train = [{"vid_name": f"yt{g}_{c:05d}", "label": g % 2, "start_frame": 0, "end_frame": 120}
             for g in range(6) for c in range(2)]
    (ann / "Diving48_V2_train.json").write_text(json.dumps(train))
    for item in train:
        (media / f"{item['vid_name']}.mp4").symlink_to(VIDEOS / "carphone_pristine.mp4")
    for clip in ("-mmq0PT-u8k_00155", "-mmq0PT-u8k_00156", "abc_00001", "zzz_00003"):
        (media / f"{clip}.mp4").unlink()
    (media / "zzz_00003.mp4").symlink_to(VIDEOS / "carphone_pristine.mp4")
    out = tmp_path / "out"
    assert stage1("-v", media, "-o", out, "--split_dir", ann, "-fps", "1", "--frame_size", "24",
                  "--val_ratio", "0.34") == 0
    train_out, val = read_json(out / "train_ucf101.json"), read_json(out / "val_ucf101.json")
    assert len(train_out) + len(val) == 12 and val
    groups = {r["group"] for r in train_out}
    assert not groups & {r["group"] for r in val}  # both clips of a YouTube video on one side
    assert [r["video_name"] for r in read_json(out / "test_ucf101.json")] == ["zzz_00003"]


@pytest.mark.slow  # stages 1-3 and predict.py in process
@pytest.mark.needs_shared_data
def test_ssv2_layout_runs_stage1_to_a_head_and_predict(tmp_path):
    import main as main_script
    import predict
    import prepare_data

    ann, media = write_ssv2(tmp_path, videos=False)
    media.mkdir()
    for vid in ("78687", "42326", "3", "99", "74225", "1420", "5555"):
        (media / f"{vid}.webm").symlink_to(VIDEOS / "carphone_pristine.mp4")
    out, data, expts = tmp_path / "out", tmp_path / "data", tmp_path / "expts"
    assert stage1("-v", media, "-o", out, "--split_dir", ann, "-fps", "1", "--frame_size", "32") == 0
    for split in ("train", "val", "test"):
        args = prepare_data.get_args_parser().parse_args(
            ["-s", split, "-f", str(out / "frames"), "-j", str(out / f"{split}_ucf101.json"), "-o", str(data),
             "--weights", "none", "--image_size", "32", "-nw", "0", "-bs", "8", "-g", "0"])
        assert prepare_data.main(args) in (0, None)
    args = main_script.get_args_parser().parse_args(
        ["--mode", "train", "--model", "meanpool", "--epochs", "1", "--data_dir", str(data), "--expt_dir",
         str(expts), "--expt_name", "e", "--num_workers", "0", "--gpu_id", "0", "--batch_size", "4"])
    assert main_script.main(args) in (0, None)
    ckpt = expts / "e" / "meanpool" / "checkpoints" / "best.pth"
    args = predict.get_args_parser().parse_args(["--model_ckpt", str(ckpt), str(media / "1420.webm"), "--topk", "2",
                                                 "--json", str(tmp_path / "pred.json")])
    assert predict.main(args) in (0, None)
    (pred,) = read_json(tmp_path / "pred.json")  # the unlabelled test video, classified from the raw .webm
    assert pred["video"].endswith("1420.webm") and pred["num_frames"] == 5
    assert all(t["label"] in SSV2_CLASSES for t in pred["topk"]) and len(pred["topk"]) == 2


# ----- every format through stages 1-3 and predict.py (issue 19's "Tests and docs") -----------------------------


def _numbered(path: Path, n: int = 30) -> None:
    from tests.synthetic import write_numbered_video

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        path.unlink()
    write_numbered_video(path, n, fps=10)


def _jester_media(root: Path) -> tuple[Path, Path, Path]:
    """Jester's layout with real 12 fps frames (a moving bar), and one video file for predict.py."""
    import cv2
    import numpy as np

    ann, media = write_jester(root)
    for folder in media.iterdir():
        for f in folder.iterdir():
            f.unlink()
        for i in range(18):
            img = np.zeros((36, 48, 3), np.uint8)
            img[:, 2 * i : 2 * i + 6] = 255
            cv2.imwrite(str(folder / f"{i + 1:05d}.jpg"), img)
    return ann, media, media / "12"  # predict.py reads the frame folder (--source_fps 12)


def _diving48_media(root: Path) -> tuple[Path, Path, Path]:
    ann, media = write_diving48(root)
    train = [{"vid_name": f"yt{g}_{c:05d}", "label": g % 2, "start_frame": 2 + c, "end_frame": 25}
             for g in range(6) for c in range(2)]
    (ann / "Diving48_V2_train.json").write_text(json.dumps(train))
    for f in media.iterdir():
        f.unlink()
    for item in (*train, {"vid_name": "zzz_00003"}):
        _numbered(media / f"{item['vid_name']}.mp4")
    return ann, media, media / "zzz_00003.mp4"


def _kinetics_media(root: Path) -> tuple[Path, Path, Path]:
    ann, media = write_kinetics(root)
    for clip in list(media.rglob("*.mp4")):
        _numbered(clip)
    return ann, media, media / "test" / "0ABC_000005_000015.mp4"


def _generic_media(root: Path) -> tuple[Path, Path, Path]:
    media = root / "videos"
    rows = ["path,label,start,end,split"]
    for i in range(7):
        _numbered(media / f"v{i}.mp4")
    for i in range(4):  # two labelled segments of each training video
        rows += [f"v{i}.mp4,{('Jump', 'Sit')[i % 2]},0.5,1.5,train", f"v{i}.mp4,{('Jump', 'Sit')[i % 2]},1.5,2.9,train"]
    rows += ["v4.mp4,Jump,,,val", "v5.mp4,Sit,,,val", "v6.mp4,,,,test"]  # the test video unlabelled
    (root / "mine.csv").write_text("\n".join(rows) + "\n")
    return root / "mine.csv", media, media / "v6.mp4"


FORMAT_MEDIA = {"jester": (_jester_media, ["-fps", "4"]), "diving48": (_diving48_media, ["-fps", "5", "--val_ratio",
                "0.34"]), "kinetics": (_kinetics_media, ["-fps", "2"]), "generic": (_generic_media, ["-fps", "2"])}


@pytest.mark.slow  # stages 1-3 and predict.py in process, per format
@pytest.mark.parametrize("fmt", sorted(FORMAT_MEDIA))
def test_every_format_runs_stage1_to_a_head_test_mode_and_predict(tmp_path, fmt):
    """Each format's fixture, with real frames or decoded video: stage 1, stage 2 (--image_size 64), a meanpool
    head with 4 segments for 1 epoch, test mode with 2 views on the test split (predictions only where the format
    publishes it without labels), and predict.py on a raw test video (Jester: its frame folder, --source_fps 12)
    giving test mode's probabilities under the checkpoint's own sampling."""
    import main as main_script
    import predict
    import prepare_data

    make, flags = FORMAT_MEDIA[fmt]
    ann, media, video = make(tmp_path)
    out, data, expts = tmp_path / "out", tmp_path / "data", tmp_path / "expts"
    assert stage1("-v", media, "-o", out, "--split_dir", ann, "--frame_size", "48", *flags) == 0
    for split in ("train", "val", "test"):
        args = prepare_data.get_args_parser().parse_args(
            ["-s", split, "-f", str(out / "frames"), "-j", str(out / f"{split}_ucf101.json"), "-o", str(data),
             "--weights", "none", "--image_size", "64", "-nw", "0", "-bs", "8", "-g", "0"])
        assert prepare_data.main(args) in (0, None)
    common = ["--data_dir", str(data), "--expt_dir", str(expts), "--expt_name", "e", "--num_workers", "0",
              "--gpu_id", "0", "--batch_size", "4"]
    args = main_script.get_args_parser().parse_args(["--mode", "train", "--model", "meanpool", "--epochs", "1",
                                                     "--clip_len", "4", *common])
    assert main_script.main(args) in (0, None)
    run = expts / "e" / "meanpool"
    ckpt = run / "checkpoints" / "best.pth"
    args = main_script.get_args_parser().parse_args(["--mode", "test", "--model_ckpt", str(ckpt), "--split", "test",
                                                     "--num_clips", "2", *common])
    assert main_script.main(args) in (0, None)
    results = read_json(run / "results_test.json")
    labelled = {r["label_idx"] >= 0 for r in read_json(out / "test_ucf101.json")} == {True}
    assert results["labelled"] is labelled and (results["clip_len"], results["num_clips"]) == (4, 2)
    assert ("top1" in results) is labelled and (labelled or fmt != "diving48")
    with open(run / "predictions_test.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all((r["correct"] != "") is labelled for r in rows)
    args = main_script.get_args_parser().parse_args(["--mode", "test", "--model_ckpt", str(ckpt), "--split", "test",
                                                     *common])  # the checkpoint's sampling: 4 segments, 1 view
    assert main_script.main(args) in (0, None)
    with open(run / "predictions_test.csv") as fh:
        tested = {r["video"]: r for r in csv.DictReader(fh)}[video.stem]
    extra = ["--source_fps", "12"] if fmt == "jester" else []
    args = predict.get_args_parser().parse_args(["--model_ckpt", str(ckpt), str(video), "--topk", "2", "--json",
                                                 str(tmp_path / "pred.json"), *extra])
    assert predict.main(args) in (0, None)
    (pred,) = read_json(tmp_path / "pred.json")
    assert len(pred["topk"]) == 2 and pred["num_frames"] >= 1
    assert pred["topk"][0]["label"] == tested["top1"]
    assert pred["topk"][0]["prob"] == pytest.approx(float(tested["prob1"]), abs=1e-4)
