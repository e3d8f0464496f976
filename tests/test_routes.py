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
    assert set(ClipRoute.own_settings) >= {"backbone", "clip_len"} and EmbeddingRoute.own_settings == ()


def test_both_collates_emit_one_batch_layout():
    rows = [(np.ones((n, 4), dtype=np.float32), n % 2, i) for i, n in enumerate((3, 5))]
    clips = [(torch.zeros(3, 2, 3, 8, 8, dtype=torch.uint8), lab, i) for i, lab in enumerate((0, 1))]
    batches = [pad_collate(rows), fixed_pad_collate(7)(rows), clip_collate(clips)]
    assert all(set(b) == {"inputs", "lengths", "labels", "indices"} for b in batches)
    assert batches[0]["inputs"].shape == (2, 5, 4) and batches[1]["inputs"].shape == (2, 7, 4)
    assert batches[2]["lengths"].tolist() == [2, 2] and batches[2]["inputs"].shape == (2, 3, 2, 3, 8, 8)
