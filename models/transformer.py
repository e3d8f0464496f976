"""BERT and RoBERTa encoders from Hugging Face `transformers` over frame embeddings, via `inputs_embeds`.

Frames are projected to the encoder width, layer-normalised to the scale of the encoder's word
embeddings, and a learned [CLS] vector is put in front; the encoder's own embeddings module then adds
its position (and token-type 0) embeddings exactly once and applies its LayerNorm, as it does for text.
Padding is masked out of attention, so padded rows cannot change a prediction, and the final [CLS]
state is classified. A video longer than the position table is subsampled uniformly to fit, with a
warning, instead of failing with an index error.

Why the frame tokens are normalised to the word-embedding scale (`frame_norm`): the encoder sums token
and position embeddings and layer-normalises the sum, so only their ratio matters. A plain linear
projection of standardised features has an RMS of ~0.58 whatever D is, while a fresh encoder's position
table is N(0, 0.02) (MiniLM's pretrained one: RMS 0.025 against 0.056 for its word embeddings). Order
then enters at 1/29 of the content's scale, and AdamW grows the positions by about one learning rate per
step, so the head is order-blind until they have grown: on the synthetic order task (benchmarks/
order_task.py) the ratio falls from 29 to ~10 over ~150 steps at lr 5e-4, and only then does order get
used. A unit-gain LayerNorm alone makes the ratio 50 and is worse; a LayerNorm whose gain starts at the
word-embedding scale (`initializer_range` for a fresh encoder, the RMS of the pretrained word table for
`pretrained`) puts frames where text tokens sit, and order is learned within ~45 steps. The pretrained
position table is used unchanged.

`positions` (models/positions.py): `learned` is the encoder's own table (the pretrained one with `pretrained`).
Every other setting replaces that table, so each works with pretrained weights too (the rest of the encoder is
loaded unchanged): `sinusoidal` writes the fixed sin/cos code into the table and freezes it; `rotary` zeroes and
freezes the table and rotates every layer's queries and keys (RoPE) through its query/key projections, which
works under every attention implementation; `time` zeroes and freezes the table and adds the code of each frame's
timestamp (`times=`, seconds) to its token; `none` zeroes and freezes the table, and the encoder is a set model
(attention is permutation-equivariant and the [CLS] state permutation-invariant), the ablation that isolates
attention from order. The sinusoidal and time codes are scaled to the RMS of the frame tokens (`position_scale`,
by default `_token_scale` below, recorded in the config), where a fresh table also sits; [CLS] gets no time code
(it is no frame).

The word-embedding table is never read (there are no tokens); it is shrunk to `pad_token_id + 1`
rows and frozen, so checkpoints do not carry a 30k-row vocabulary and DDP sees no unused parameter.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import BertConfig, BertModel, PreTrainedConfig, PreTrainedModel, RobertaConfig, RobertaModel

from models.base import HeadConfig, VideoHead, length_mask
from models.positions import CODE_RMS, POSITIONS, RotaryLinear, check_times, sinusoidal_code, time_code
from models.positions import uniform_frame_index as uniform_frame_index
from utils import BadInputError

logger = logging.getLogger(__name__)


@dataclass
class TransformerConfig(HeadConfig):
    """`pretrained` (a hub name or a local directory) and `encoder_config` (a rebuild) take the encoder's own
    sizes; the size fields are for a new encoder. `max_positions` counts [CLS]; `intermediate_size` None is
    4 * hidden_size; `frame_norm` None: on for a new model, off for a config from before it existed."""

    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int | None = None
    dropout: float = 0.1
    max_positions: int = 512
    pretrained: str | None = None
    attn_implementation: str = "sdpa"
    encoder_config: dict[str, Any] | None = None
    positions: str = "learned"
    frame_norm: bool | None = None
    position_scale: float | None = None  # RMS of the sinusoidal/time codes; None: the frame tokens' (recorded)

    def validate(self) -> None:
        super().validate()
        if self.positions not in POSITIONS:
            raise ValueError(f"unknown positions {self.positions!r}; choose from {', '.join(POSITIONS)}")
        if self.pretrained is None and self.encoder_config is None and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}: each "
                             "attention head takes an equal share of the width")


class TransformerHead(VideoHead):
    """Shared body of BertHead and RobertaHead; subclasses name the `transformers` classes."""

    config_class: type[PreTrainedConfig]
    model_class: type[PreTrainedModel]
    Config = TransformerConfig
    exposes_attention: ClassVar[bool] = True
    has_positions: ClassVar[bool] = True
    groups_by_length: ClassVar[bool] = True

    def __init__(self, input_dim: int, num_classes: int, **flags: object) -> None:
        """Build the encoder from `encoder_config` (a rebuild from `.config`, no download and no file
        needed), else from `pretrained` (a hub name or a local directory, loaded with its weights), else
        from the size flags. `max_positions` counts the [CLS] token, so a video fits when its length is at
        most `max_positions - 1`; `intermediate_size` defaults to `4 * hidden_size`. `positions`: "learned"
        (the encoder's table) or "none" (a set model). `frame_norm` (see the module docstring) is on for
        every new model; None when rebuilding means a config from before it existed, so off."""
        cfg = TransformerConfig.from_flags(**flags)
        encoder_config, pretrained, positions = cfg.encoder_config, cfg.pretrained, cfg.positions
        attn_implementation = cfg.attn_implementation
        frame_norm = encoder_config is None if cfg.frame_norm is None else bool(cfg.frame_norm)
        hidden_size, num_layers, num_heads = int(cfg.hidden_size), int(cfg.num_layers), int(cfg.num_heads)
        intermediate_size = 4 * hidden_size if cfg.intermediate_size is None else int(cfg.intermediate_size)
        dropout, max_positions = float(cfg.dropout), int(cfg.max_positions)

        if encoder_config is not None:
            hf_config = self.config_class.from_dict(dict(encoder_config))
            encoder = self.model_class(hf_config, add_pooling_layer=False)
        elif pretrained:
            encoder = self._load_pretrained(str(pretrained), dropout)
        else:
            defaults = self.config_class()
            hf_config = self.config_class(
                vocab_size=(defaults.pad_token_id or 0) + 1,  # the encoder never sees token ids
                hidden_size=hidden_size,
                num_hidden_layers=num_layers,
                num_attention_heads=num_heads,
                intermediate_size=intermediate_size,
                hidden_dropout_prob=dropout,
                attention_probs_dropout_prob=dropout,
                max_position_embeddings=max_positions + self._position_offset_for(defaults),
                type_vocab_size=1,
                bos_token_id=None,  # no vocabulary, so no special tokens either
                eos_token_id=None,
            )
            encoder = self.model_class(hf_config, add_pooling_layer=False)
        encoder.set_attn_implementation(attn_implementation)
        token_scale = self._token_scale(encoder, from_table=bool(pretrained) and encoder_config is None)
        position_scale = token_scale if cfg.position_scale is None else float(cfg.position_scale)
        self._shrink_word_embeddings(encoder)
        hf_config = encoder.config
        self._set_positions(encoder, positions, position_scale)

        super().__init__(
            input_dim,
            num_classes,
            hidden_size=int(hf_config.hidden_size),
            num_layers=int(hf_config.num_hidden_layers),
            num_heads=int(hf_config.num_attention_heads),
            intermediate_size=int(hf_config.intermediate_size),
            dropout=dropout,
            max_positions=int(hf_config.max_position_embeddings) - self._position_offset_for(hf_config),
            pretrained=None if pretrained is None else str(pretrained),
            attn_implementation=attn_implementation,
            encoder_config=hf_config.to_diff_dict(),
            positions=positions,
            frame_norm=frame_norm,
            position_scale=position_scale,
        )
        self.encoder = encoder
        self.positions = positions
        self.order_aware = positions != "none"
        self.uses_times = positions == "time"
        self.position_scale = position_scale
        width = int(hf_config.hidden_size)
        self.position_offset = self._position_offset_for(hf_config)
        self.max_frames = int(hf_config.max_position_embeddings) - self.position_offset - 1
        self.projection = nn.Linear(input_dim, width)
        self.frame_norm: nn.LayerNorm | None = None
        if frame_norm:
            self.frame_norm = nn.LayerNorm(width, eps=float(hf_config.layer_norm_eps))
            nn.init.constant_(self.frame_norm.weight, token_scale)
        self.cls_token = nn.Parameter(torch.randn(width) * float(hf_config.initializer_range))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, num_classes)
        # Frame index kept for each token after [CLS] in the latest forward, (B, T'): maps attention to frames.
        self.last_frame_index: torch.Tensor | None = None

    @staticmethod
    def _position_offset_for(hf_config: PreTrainedConfig) -> int:
        return 0

    def _set_positions(self, encoder: PreTrainedModel, positions: str, scale: float) -> None:
        """Make the encoder's position table what `positions` asks for (the module docstring); `learned` keeps it."""
        if positions == "learned":
            return
        table = encoder.embeddings.position_embeddings
        with torch.no_grad():
            table.weight.zero_()
            if positions == "sinusoidal":
                offset = self._position_offset_for(encoder.config)
                steps = torch.arange(table.num_embeddings - offset, dtype=torch.float32)
                code = sinusoidal_code(steps, table.embedding_dim) * (scale / CODE_RMS)
                table.weight[offset:] = code.to(table.weight.dtype)
        table.requires_grad_(False)
        if positions == "rotary":
            heads = int(encoder.config.num_attention_heads)
            for layer in encoder.encoder.layer:
                attention = layer.attention.self
                attention.query = RotaryLinear.replacing(attention.query, heads)
                attention.key = RotaryLinear.replacing(attention.key, heads)

    def _load_pretrained(self, name_or_dir: str, dropout: float) -> PreTrainedModel:
        try:
            return self.model_class.from_pretrained(
                name_or_dir,
                add_pooling_layer=False,
                hidden_dropout_prob=dropout,
                attention_probs_dropout_prob=dropout,
            )
        except (OSError, ValueError) as exc:
            raise BadInputError(f"cannot load pretrained encoder {name_or_dir!r}: {exc}") from exc

    @staticmethod
    def _token_scale(encoder: PreTrainedModel, from_table: bool) -> float:
        """The RMS at which the encoder expects its input tokens: that of its (pretrained) word-embedding
        table, or, for a fresh encoder, the std its own initialisation draws word embeddings from."""
        if from_table:
            table = encoder.get_input_embeddings().weight.detach()
            pad = encoder.config.pad_token_id
            if pad is not None and table.shape[0] > 1:
                table = torch.cat([table[:pad], table[pad + 1 :]])
            rms = float(table.float().pow(2).mean().sqrt())
            if rms > 0:
                return rms
        return float(encoder.config.initializer_range)

    @staticmethod
    def _shrink_word_embeddings(encoder: PreTrainedModel) -> None:
        config = encoder.config
        pad = config.pad_token_id
        rows = 1 if pad is None else int(pad) + 1
        if encoder.get_input_embeddings().num_embeddings != rows:
            encoder.set_input_embeddings(nn.Embedding(rows, config.hidden_size, padding_idx=pad))
            config.vocab_size = rows
            for key in ("bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
                token = getattr(config, key, None)
                if isinstance(token, int) and token >= rows:
                    setattr(config, key, None)
        encoder.get_input_embeddings().requires_grad_(False)

    def position_ids(self, num_tokens: int, device: torch.device) -> torch.Tensor:
        """Position ids of [CLS] and the frames, (1, num_tokens); RoBERTa's start after its padding index."""
        return torch.arange(self.position_offset, self.position_offset + num_tokens, device=device).unsqueeze(0)

    def frame_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised frame features (B, T, D) -> the encoder's frame tokens (B, T, hidden): the projection,
        layer-normalised to the word-embedding scale where `frame_norm` is on (see the module docstring)."""
        tokens = self.projection(x)
        return self.frame_norm(tokens) if self.frame_norm is not None else tokens

    def forward(
        self, feats: torch.Tensor, lengths: torch.Tensor, return_attentions: bool = False,
        times: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Logits (B, num_classes); with `return_attentions`, also one (B, heads, T'+1, T'+1) attention map
        per layer (token 0 is [CLS], token i > 0 is frame `last_frame_index[b, i - 1]`). `times` (B, T): each
        frame's timestamp in seconds, read only with positions "time" (and needed there)."""
        if self.uses_times:
            times = check_times(times, feats, type(self).__name__)
        x = self.standardize(feats, lengths)
        lengths = lengths.to(x.device)
        if x.shape[1] > self.max_frames and bool((lengths > self.max_frames).any()):
            logger.warning(
                "a video of %d frames is longer than the encoder's %d positions after [CLS]: "
                "subsampling it uniformly to %d frames",
                int(lengths.max()),
                self.max_frames,
                self.max_frames,
            )
        index, lengths = uniform_frame_index(lengths, x.shape[1], self.max_frames)
        if x.shape[1] > self.max_frames:
            x = torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[2]))
            if times is not None:
                times = torch.gather(times, 1, index)
        self.last_frame_index = index

        batch, frames = x.shape[:2]
        frame_tokens = self.frame_tokens(x)
        if self.uses_times:  # padding's codes are masked out of attention like the padding itself
            code = time_code(times, frame_tokens.shape[-1]) * (self.position_scale / CODE_RMS)
            frame_tokens = frame_tokens + code.to(frame_tokens.dtype)
        # The sequence in the parameters' dtype: the encoder adds its float32 position table anyway, and [CLS]'s
        # gradient, a sum over the batch, then adds up in float32 (under fp16 autocast its half-precision sum
        # overflowed at GradScaler's initial scale, once the frame tokens were normalised to the word scale).
        tokens = torch.cat([self.cls_token.expand(batch, 1, -1), frame_tokens.to(self.cls_token.dtype)], dim=1)
        attention_mask = length_mask(lengths + 1, frames + 1).long()  # [CLS] is always attended
        kwargs: dict[str, Any] = {
            "inputs_embeds": tokens,
            "attention_mask": attention_mask,
            "position_ids": self.position_ids(frames + 1, x.device),
            "token_type_ids": torch.zeros_like(attention_mask),
        }
        if not return_attentions:
            hidden = self.encoder(**kwargs).last_hidden_state
            return self.classifier(self.dropout(hidden[:, 0]))

        # Only the eager implementation materialises attention weights; switch for this call only.
        previous = self.encoder.config._attn_implementation
        if previous != "eager":
            self.encoder.set_attn_implementation("eager")
        try:
            out = self.encoder(**kwargs, output_attentions=True)
        finally:
            if previous != "eager":
                self.encoder.set_attn_implementation(previous)
        logits = self.classifier(self.dropout(out.last_hidden_state[:, 0]))
        return logits, tuple(out.attentions)


class BertHead(TransformerHead):
    config_class = BertConfig
    model_class = BertModel


class RobertaHead(TransformerHead):
    """RoBERTa numbers positions from `pad_token_id + 1` (fairseq's habit), so its table of
    `max_position_embeddings` rows holds `max_position_embeddings - pad_token_id - 1` tokens."""

    config_class = RobertaConfig
    model_class = RobertaModel

    @staticmethod
    def _position_offset_for(hf_config: PreTrainedConfig) -> int:
        pad = hf_config.pad_token_id
        return 0 if pad is None else int(pad) + 1
