"""routes.py: the model name picks the route, and both routes hand the loops one batch layout."""

from __future__ import annotations

import numpy as np
import torch

from clip_dataset import clip_collate
from dataset import fixed_pad_collate, pad_collate
from models import MODEL_NAMES
from routes import ALL_MODEL_NAMES, ROUTES, ClipRoute, EmbeddingRoute, route_for


def test_every_model_name_has_one_route_and_round_trips_through_its_head():
    for name in ALL_MODEL_NAMES:
        route = route_for(name)
        assert route in ROUTES
        assert route.model_name(route.head_name(name)) == name and route.head_name(name) in MODEL_NAMES
    assert route_for("bert") is EmbeddingRoute and route_for("e2e_bert") is ClipRoute
    assert ClipRoute.fixed_length and not EmbeddingRoute.fixed_length
    assert set(ClipRoute.own_settings) >= {"backbone", "clip_len"}
    assert EmbeddingRoute.own_settings == ("clip_len", "num_clips")  # the segments, the one sampling rule of both


def test_both_collates_emit_one_batch_layout():
    """Views are consecutive rows of inputs and lengths, one label and index per video, in both routes."""
    rows = [(np.ones((n, 4), dtype=np.float32), n % 2, i) for i, n in enumerate((3, 5))]
    viewed = [(np.ones((3, 2, 4), dtype=np.float32), lab, i) for i, lab in enumerate((0, 1))]  # 3 views of 2 frames
    clips = [(torch.zeros(3, 2, 3, 8, 8, dtype=torch.uint8), lab, i) for i, lab in enumerate((0, 1))]
    batches = [pad_collate(rows), fixed_pad_collate(7)(rows), pad_collate(viewed), clip_collate(clips)]
    assert all(set(b) == {"inputs", "lengths", "labels", "indices", "views"} for b in batches)
    assert batches[0]["inputs"].shape == (2, 5, 4) and batches[1]["inputs"].shape == (2, 7, 4)
    assert [b["views"] for b in batches] == [1, 1, 3, 3]
    assert batches[2]["inputs"].shape == (6, 2, 4) and batches[2]["labels"].tolist() == [0, 1]
    assert batches[3]["lengths"].tolist() == [2] * 6 and batches[3]["inputs"].shape == (6, 2, 3, 8, 8)
    assert batches[3]["indices"].tolist() == [0, 1]


def test_the_clip_route_flips_by_the_class_names(tmp_path, caplog):
    """e2e training clips of mirrored classes swap labels when flipped; an unpaired direction class turns the flip
    off (--hflip auto), as the log says; --hflip off never flips."""
    import json
    import logging

    import main
    from tests.conftest import write_video_frames

    write_video_frames(tmp_path / "frames", "v0", [np.zeros((16, 16, 3), np.uint8)] * 3)
    (tmp_path / "train_ucf101.json").write_text(json.dumps([{"video_name": "v0", "label_idx": 0}]))

    def train_split(classes, *flags):
        (tmp_path / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
        args = main.get_args_parser().parse_args(["--mode", "train", "--model", "e2e_meanpool", "--split_json_dir",
                                                  str(tmp_path), "--weights", "none", *flags])
        return ClipRoute(args).load_split("train", train=True).dataset

    caplog.set_level(logging.INFO, logger="actionbert")
    paired = train_split(["SwipeLeft", "SwipeRight", "Wave"])
    assert paired.hflip and paired.flip_label_map == {0: 1, 1: 0}
    assert "swapping SwipeLeft <-> SwipeRight" in caplog.text
    unpaired = train_split(["SwipeLeft", "Wave", "Clap"])
    assert not unpaired.hflip and "without a mirrored partner (SwipeLeft)" in caplog.text
    assert not train_split(["Wave", "Clap", "Jump"], "--hflip", "off").hflip
    assert train_split(["Wave", "Clap", "Jump"]).hflip  # nothing to mirror: flips as before
