"""How close ActionBERT's frame preprocessing (OpenCV, from a backbone record) comes to the library's own transform.

For each backbone, frames from the real clips in ../shared/data/videos (at their own size and at UCF-101's
320x240) go through `transforms.resize_frame` with the backbone record's ResizeSpec and through the library's own
eval transform: timm's `create_transform(**resolve_data_config(...))` (PIL) for timm:NAME, the model's image
processor (`AutoImageProcessor`, transformers' default torchvision backend) for hf:DIR. The difference is reported
in grey levels (0-255, before normalisation): mean, 99th percentile and maximum over all pixels of all frames.

    python benchmarks/check_preprocessing.py [-m timm:vit_base_patch16_clip_224.openai ...] [--hf_defaults]

--hf_defaults also checks CLIP's, DINOv2's and SigLIP's processors as transformers configures them by default
(written to a temporary folder, no download). This is an accuracy check, not a timing: it prints one line per
backbone and appends nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from models.backbone import resolve_backbone  # noqa: E402
from transforms import resize_frame  # noqa: E402

VIDEOS = ROOT.parent / "shared" / "data" / "videos"
DEFAULT_MODELS = ("timm:vit_base_patch16_clip_224.openai", "timm:vit_small_patch14_dinov2.lvd142m",
                  "timm:convnext_tiny", "timm:vit_base_patch16_siglip_224.webli")


def real_frames(per_clip: int = 3) -> list[np.ndarray]:
    """RGB frames from each reference clip, at the clip's own size and resized to UCF-101's 320x240."""
    frames = []
    for path in sorted(VIDEOS.glob("*")):
        cap = cv2.VideoCapture(str(path))
        total = max(1, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
        for k in range(per_clip):
            cap.set(cv2.CAP_PROP_POS_FRAMES, min(total - 1, (k + 1) * total // (per_clip + 2)))
            ok, bgr = cap.read()
            if ok:
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                frames += [rgb, cv2.resize(rgb, (320, 240), interpolation=cv2.INTER_AREA)]
        cap.release()
    if not frames:
        raise SystemExit(f"no frames read from {VIDEOS}")
    return frames


def library_transform(name: str):
    """RGB uint8 HxWx3 -> the library's own eval transform, as uint8-scale float HxWx3 before normalisation."""
    if name.startswith("timm:"):
        import timm
        import torch
        from PIL import Image

        cfg = timm.data.resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(name[5:]).to_dict())
        tf = timm.data.create_transform(**cfg)
        mean, std = torch.tensor(cfg["mean"]).view(3, 1, 1), torch.tensor(cfg["std"]).view(3, 1, 1)
        return lambda rgb: ((tf(Image.fromarray(rgb)) * std + mean) * 255).permute(1, 2, 0).numpy()
    from transformers import AutoImageProcessor

    proc = AutoImageProcessor.from_pretrained(name[3:])

    def apply(rgb: np.ndarray) -> np.ndarray:
        out = proc(images=rgb, return_tensors="np", do_normalize=False, do_rescale=False)["pixel_values"][0]
        return out.transpose(1, 2, 0).astype(np.float64)

    return apply


def compare(name: str, frames: list[np.ndarray]) -> tuple[float, float, float]:
    """(mean, 99th percentile, max) absolute difference in grey levels over all frames."""
    record = resolve_backbone(name, "none")
    theirs = library_transform(name)
    diffs = [np.abs(resize_frame(f, record.resize).astype(np.float64) - theirs(f)).ravel() for f in frames]
    d = np.concatenate(diffs)
    return float(d.mean()), float(np.percentile(d, 99)), float(d.max())


def hf_default_dirs(root: Path) -> list[str]:
    """Folders holding transformers' default CLIP, DINOv2 (BitImageProcessor as facebook/dinov2-* use it) and SigLIP
    processor configs."""
    from transformers import BitImageProcessor, CLIPImageProcessor, SiglipImageProcessor

    processors = {
        "clip": CLIPImageProcessor(),
        "dinov2": BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                    image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                                    do_convert_rgb=True),
        "siglip": SiglipImageProcessor(),
    }
    for name, proc in processors.items():
        proc.save_pretrained(root / name)
    return [f"hf:{root / name}" for name in processors]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", action="append", default=None, help="timm:NAME or hf:DIR (repeatable)")
    p.add_argument("--hf_defaults", action="store_true", help="also transformers' default CLIP/DINOv2/SigLIP configs")
    args = p.parse_args()
    frames = real_frames()
    with tempfile.TemporaryDirectory() as tmp:
        names = list(args.model or DEFAULT_MODELS) + (hf_default_dirs(Path(tmp)) if args.hf_defaults else [])
        print(f"{len(frames)} frames ({len(frames) // 2} at their own size, as many at 320x240); grey levels 0-255")
        for name in names:
            mean, p99, worst = compare(name, frames)
            print(f"{name}: mean {mean:.2f}, p99 {p99:.1f}, max {worst:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
