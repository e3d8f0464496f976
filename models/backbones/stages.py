"""Stages of a backbone, in input order: what --freeze_backbone_stages counts and --grad_checkpointing wraps.
Shared by the families (a ResNet's stages are the same whether torchvision or timm built it)."""

from __future__ import annotations

from torch import nn

Stage = list[nn.Module | nn.Parameter]  # what freezing one stage sets requires_grad=False on


def find_resnet(module: nn.Module) -> nn.Module | None:
    """The first submodule shaped like a torchvision ResNet (the backbone may be wrapped)."""
    names = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
    for sub in module.modules():
        if all(isinstance(getattr(sub, n, None), nn.Module) for n in names):
            return sub
    return None


Stage = list[nn.Module | nn.Parameter]  # what freezing one stage sets requires_grad=False on


def main_blocks(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The model's sequence of blocks: the Sequential or ModuleList of two or more parameterised children holding the
    most parameters (timm's `blocks` or ConvNeXt `stages`, Hugging Face's `encoder.layer(s)`)."""
    best, best_count = None, 0
    for name, module in model.named_modules():
        if isinstance(module, (nn.Sequential, nn.ModuleList)):
            children = list(module.children())
            if len(children) >= 2 and all(any(True for _ in c.parameters()) for c in children):
                count = sum(p.numel() for p in module.parameters())
                if count > best_count:
                    best, best_count = (name, module), count
    return best


def _cover(model: nn.Module, names: set[str]) -> Stage:
    """The outermost submodules whose parameters are all in `names`, plus the parameters of `names` left over."""
    out: Stage = []
    taken: list[str] = []
    for mname, module in model.named_modules():
        if not mname or any(mname.startswith(t + ".") for t in taken):
            continue
        params = [f"{mname}.{n}" for n, _ in module.named_parameters()]
        if params and all(p in names for p in params):
            out.append(module)
            taken.append(mname)
    covered = {f"{t}.{n}" for t in taken for n, _ in model.get_submodule(t).named_parameters()}
    out += [p for n, p in model.named_parameters() if n in names and n not in covered]
    return out


def block_stages(model: nn.Module) -> list[Stage]:
    """Stages of a timm or Hugging Face model: stage 1 is the input embedding (patch embedding, class and register
    tokens, position table, pre-norm; a CNN's stem) with the first block, then one stage per block (ViT block,
    ConvNeXt stage), then everything after the blocks (final norm, pooling head, projection). So freezing K <= the
    number of blocks freezes the embedding and the first K blocks; one more freezes the whole backbone."""
    found = main_blocks(model)
    if found is None:
        return [[child] for child in model.children() if any(True for _ in child.parameters())]
    path, blocks = found
    names = [n for n, _ in model.named_parameters()]
    in_block = {n: i for i in range(len(blocks)) for n in names if n.startswith(f"{path}.{i}.")}
    first = min(names.index(n) for n in in_block)
    before = {n for n in names[:first] if n not in in_block}
    after = {n for n in names[first:] if n not in in_block}
    stages: list[Stage] = [[*_cover(model, before), blocks[0]], *[[blocks[i]] for i in range(1, len(blocks))]]
    if after:
        stages.append(_cover(model, after))
    return stages


def resnet_stages(backbone: nn.Module) -> list[Stage] | None:
    """ResNets (torchvision's and timm's): stage 0 = conv1 + bn1 (the stem), stages 1-4 = layer1..layer4."""
    net = find_resnet(backbone)
    if net is None:
        return None
    return [[net.conv1, net.bn1], [net.layer1], [net.layer2], [net.layer3], [net.layer4]]
