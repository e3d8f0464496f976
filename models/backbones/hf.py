"""Hugging Face vision encoders through transformers as frame backbones (hf:NAME_OR_DIR): CLIP, SigLIP, DINOv2, ..."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.backbone import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneRecord,
    FrameEncoder,
    complete_record,
    first_line,
    interpolation_name,
    make_record,
    rgb_triple,
    seeded,
)
from models.backbones.stages import Stage, block_stages
from transforms import ResizeSpec
from utils import BadInputError

log = logging.getLogger("actionbert")

DEFAULT_WEIGHTS = "pretrained"
WEIGHTS_IN_FOLDER = True


def _hf_input(name: str) -> tuple[ResizeSpec, tuple, tuple]:
    """Input, mean and std from the model's image processor config (preprocessor_config.json), read as the
    processor would read it but without instantiating one (no PIL or torchvision code at run time)."""
    from transformers.image_processing_base import ImageProcessingMixin

    try:
        cfg, _ = ImageProcessingMixin.get_image_processor_dict(name)
    except Exception as exc:  # missing file, offline hub, unreadable JSON
        how = ("save the model's image processor there (AutoImageProcessor.from_pretrained(ID).save_pretrained(DIR))"
               if Path(name).is_dir() else "offline, pass a local copy of the model folder: hf:DIR")
        raise BadInputError(f"hf:{name}: cannot read its image processor config, preprocessor_config.json "
                            f"({first_line(exc)}), which says the model's input size, mean and std; {how}") from None
    where = f"hf:{name} preprocessor_config.json"
    if cfg.get("do_resize") is False:
        raise BadInputError(f"{where}: do_resize is false; frames of any size cannot be fed to it")
    if cfg.get("do_rescale", True) and abs(float(cfg.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        raise BadInputError(f"{where}: rescale_factor {cfg['rescale_factor']} (only 1/255 is supported)")
    if cfg.get("do_normalize", True):
        mean = rgb_triple(cfg.get("image_mean", IMAGENET_MEAN), "image_mean", where)
        std = rgb_triple(cfg.get("image_std", IMAGENET_STD), "image_std", where)
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    interp = interpolation_name(cfg.get("resample", 2), where)
    size, crop = cfg.get("size"), cfg.get("crop_size") if cfg.get("do_center_crop") else None
    if isinstance(size, int):
        size = {"shortest_edge": size} if crop is not None else {"height": size, "width": size}
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    if crop is not None and crop.get("height") != crop.get("width"):
        raise BadInputError(f"{where}: crop_size {crop} is not square")
    if isinstance(size, dict) and "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        if "crop_pct" in cfg and cfg["crop_pct"] is not None:  # ConvNeXt's processor: crop below 384 px, warp above
            spec = ResizeSpec(edge, "crop", float(cfg["crop_pct"]), interp, "transformers") if edge < 384 else (
                ResizeSpec(edge, "squash", 1.0, interp, "transformers"))
        elif crop is not None:
            spec = ResizeSpec(int(crop["height"]), "crop", int(crop["height"]) / edge, interp, "transformers")
        else:
            log.info("%s: no centre crop; the centre square of the resized frame is used", where)
            spec = ResizeSpec(edge, "crop", 1.0, interp, "transformers")
    elif isinstance(size, dict) and size.get("height") is not None and size.get("height") == size.get("width"):
        side = int(size["height"])
        if crop is not None:
            spec = ResizeSpec(int(crop["height"]), "squash", int(crop["height"]) / side, interp, "transformers")
        else:
            spec = ResizeSpec(side, "squash", 1.0, interp, "transformers")
    else:
        raise BadInputError(f"{where}: size {size!r} is not supported (shortest_edge, or square height/width)")
    if spec.crop_pct > 1:
        raise BadInputError(f"{where}: crop_size is larger than the resized image")
    return spec, mean, std


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()


@contextmanager
def _quiet_load_report() -> Iterator[None]:
    """transformers logs a report of unexpected keys (a CLIP checkpoint's text tower, when only its vision tower is
    built) as a warning; missing keys, the ones that matter, are checked here instead. A filter, not a level:
    transformers runs extra checks (and warns) when its logger's level is raised."""
    logger, drop = logging.getLogger("transformers.modeling_utils"), _DropLoadReport()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _hf_vision_config(record: BackboneRecord) -> Any:
    """The vision part of the model's config: from the record (rebuilding offline) or read from NAME."""
    from transformers import AutoConfig

    if record.config is not None:
        d = dict(record.config)
        return AutoConfig.for_model(d.pop("model_type"), **d)
    try:
        config = AutoConfig.from_pretrained(record.name)
    except Exception as exc:
        raise BadInputError(f"hf:{record.name}: cannot read its config.json ({first_line(exc)}); offline, pass a "
                            "local model folder: hf:DIR") from None
    return getattr(config, "vision_config", None) or config


class HFEncoder(FrameEncoder):
    def __init__(self, model: nn.Module, record: BackboneRecord, projection: str | None) -> None:
        super().__init__(model, record)
        self.projection = projection
        native = getattr(model.config, "image_size", None)
        takes = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
        # position embeddings interpolated to another input size, where the model needs telling
        self.forward_kwargs = {"interpolate_pos_encoding": True} if takes and native != record.image_size else {}

    def _outputs(self, x: torch.Tensor) -> Any:
        return self.model(pixel_values=x, **self.forward_kwargs)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self._outputs(x).last_hidden_state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.record.feature in ("cls", "mean"):
            return self._token_feature(x)
        out = self._outputs(x)
        feats = getattr(out, self.projection or "pooler_output", None)
        if feats is None:
            raise BadInputError(f"hf:{self.record.name} ({type(self.model).__name__}) has no pooler output; use "
                                "--feature cls or mean")
        return feats.flatten(1)

    def set_library_checkpointing(self, enabled: bool) -> bool:
        if not self.model.supports_gradient_checkpointing:
            return False
        # transformers >= 5.x names it activation_checkpointing; earlier releases gradient_checkpointing
        on = getattr(self.model, "activation_checkpointing_enable", None) or self.model.gradient_checkpointing_enable
        off = getattr(self.model, "activation_checkpointing_disable", None) or self.model.gradient_checkpointing_disable
        if enabled:
            on({"use_reentrant": False})
        else:
            off()
        return True

    def feature_source(self, prefix: int | None) -> str:
        return {
            "pooled": "pooler_output",
            "cls": "last_hidden_state[:, 0]",
            "mean": f"last_hidden_state[:, {prefix}:].mean(1)",
            "projected": {"image_embeds": "image_embeds",
                          "pooler_output": "pooler_output: SigLIP's image embedding"}.get(self.projection or "", ""),
        }[self.record.feature]

    def library_config(self) -> dict[str, Any] | None:
        return self.model.config.to_dict()


def _build_hf(record: BackboneRecord, weights: str, seed: int | None, flag: str) -> FrameEncoder:
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    src = record.name if weights in ("pretrained", "none") else weights  # the weights: NAME's or a --weights folder
    config = _hf_vision_config(record)
    class_name = MODEL_MAPPING_NAMES.get(config.model_type)
    if class_name is None:
        raise BadInputError(f"hf:{record.name}: transformers has no model for config type {config.model_type!r}")
    projection = None
    if record.feature == "projected":
        with_projection = getattr(transformers, class_name + "WithProjection", None)
        if with_projection is not None:  # CLIP: image_embeds, after visual_projection
            class_name, projection = with_projection.__name__, "image_embeds"
        elif config.model_type.startswith("siglip"):  # SigLIP's get_image_features is the pooled (MAP head) output
            projection = "pooler_output"
        else:
            raise BadInputError(f"--feature projected: hf:{record.name} ({config.model_type}) has no image-text "
                                "projection; it is for CLIP and SigLIP models (use pooled, cls or mean)")
    cls = getattr(transformers, class_name)
    if weights == "none":
        with seeded(seed):
            model = cls(config)
    else:
        try:
            with _quiet_load_report():
                model, info = cls.from_pretrained(src, config=config, output_loading_info=True)
        except Exception as exc:
            raise BadInputError(f"cannot load hf:{record.name} from {src} ({first_line(exc)}); use {flag} none for "
                                f"a random backbone or {flag} PATH for a local model folder") from None
        missing = sorted(set(info.get("missing_keys") or ()) | {k[0] for k in info.get("mismatched_keys") or ()})
        if missing:
            raise BadInputError(f"{src} does not hold {class_name}'s weights: {len(missing)} missing or mismatched "
                                f"(e.g. {missing[0]}); is it another kind of model?")
    return HFEncoder(model.float(), record, projection)


def resolve(name: str, weights: str, seed: int | None, feature: str, image_size: int | None,
            resize: str | None) -> BackboneRecord:
    # a local folder by its absolute path, so predict.py finds it from any working directory
    full_name = str(Path(name).resolve()) if Path(name).is_dir() else name
    own, mean, std = _hf_input(full_name)
    return make_record("hf", name, full_name, weights, seed, feature, own, mean, std, image_size, resize)


def build(record: BackboneRecord, weights: str, seed: int | None, flag: str) -> tuple[nn.Module, BackboneRecord]:
    module = _build_hf(record, weights, seed, flag)
    return module, complete_record(module)


def stages(backbone: nn.Module) -> list[Stage]:
    return block_stages(backbone.model)
