"""Parameter-efficient fine-tuning of any family's backbone with the `peft` library (`train.py --peft lora`).

    python train.py --peft lora --peft_r 8 --peft_alpha 16 --peft_target_modules "[q_proj, v_proj]"   # a ViT

What trains: peft's adapters (LoRA, LoHa or IA3) on the backbone's pretrained layers, plus everything that
trains in full fine-tuning and is not pretrained: the family's heads (projections, GCN, learnable tokens,
temperature) and a backbone's own new layers (the packaged hybrid's token projection and transformer, see
`new_backbone_prefixes`); the pretrained weights are frozen. What is saved (`write_adapter_folder`): peft's format, loadable with
`PeftModel.from_pretrained(base, folder)` where `base` is the untrained family model on the pretrained backbone
(`base_model_for_adapter`). The adapter file holds the adapter weights *and* the trained non-backbone weights
under their full names (`base_model.model.projection.weight`, ...): the heads start from a random
initialisation, so an adapter without them could not reproduce the model; peft's loader assigns every key
of the file that names a parameter of the model. The exported `model/` folder keeps the merged full model
(`merge_and_unload`) for users who want one file; the adapter goes to `model/adapter/`.

Adapt and Align's own bottleneck adapters are not peft's: they sit on a module's *output* through forward
hooks at positions peft does not offer (after the projection BatchNorm of each MBConv block, after each
transformer MLP), see
`hf_sbir.models.adapt_align.modeling_adapt_align`; with `--peft` they are switched off.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from hf_sbir.training.config import PEFT_METHODS

ADAPTER_SUBFOLDER = "adapter"
# peft keys every saved weight as `base_model.model.<name in the family model>`.
_PEFT_PREFIX = "base_model.model."


def _adaptable(module: nn.Module) -> bool:
    """Layers peft's LoRA/LoHa/IA3 handle exactly: Linear, and plain (ungrouped) Conv2d.

    EfficientNet's `Conv2dDynamicSamePadding` pads inside `forward`, which peft's adapter convolution does not
    repeat (and peft rebuilds a layer through its class's constructor, whose arguments that subclass
    reorders); the hybrid backbone turns its 1x1 layers into plain ones, the k x k ones stay frozen. Grouped
    (depthwise) convolutions cannot be merged by peft."""
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, nn.Conv2d):
        return type(module) is nn.Conv2d and module.groups == 1
    return False


def new_backbone_prefixes(backbone: nn.Module) -> tuple[str, ...]:
    """Names (prefixes, in `backbone`) of the backbone's parts that do not come pretrained: a backbone module
    that declares `pretrained_submodules` (the hybrid EfficientNet: its CNN) has every other child new."""
    new = []
    for prefix, module in backbone.named_modules():
        keep = getattr(module, "pretrained_submodules", None)
        if keep is None:
            continue
        names = [n for n, _ in module.named_children()] + [n for n, _ in module.named_parameters(recurse=False)]
        new += [f"{prefix}.{n}" if prefix else n for n in names if n not in keep]
    return tuple(new)


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def backbone_target_modules(model: nn.Module, targets: list[str] | None) -> list[str]:
    """Full names (in `model`) of the backbone layers to adapt: every adaptable pretrained layer of
    `model.backbone` when `targets` is None, else those whose name ends with one of `targets`. Raises
    ValueError (one line) for a target that names no such layer."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise ValueError(f"{type(model).__name__} has no `backbone` for peft to adapt.")
    new = new_backbone_prefixes(backbone)
    # A&A's hand-injected bottleneck adapters (backbone.adapters.*) are never peft targets.
    layers = {name: m for name, m in backbone.named_modules() if name and not name.startswith("adapters.")}
    adaptable = [name for name, m in layers.items() if _adaptable(m) and not _under(name, new)]
    if targets is None:
        chosen = adaptable
    else:
        chosen = []
        for target in targets:
            hits = [n for n in layers if n == target or n.endswith("." + target)]
            good = [n for n in hits if n in adaptable]
            if not good:
                if hits and all(_under(n, new) for n in hits):
                    why = "names layers the backbone adds to its pretrained part (they train in full under peft)"
                elif hits:
                    why = (f"names {type(layers[hits[0]]).__name__} layers, which peft cannot adapt here (Linear and "
                           "plain ungrouped Conv2d only)")
                else:
                    why = "names no layer of the backbone"
                leaves = sorted({n.rsplit(".", 1)[-1] for n in adaptable})
                raise ValueError(
                    f"peft_target_modules: {target!r} {why}; adaptable layer names: {', '.join(leaves)} "
                    "(or leave peft_target_modules null for all of them)."
                )
            chosen += [n for n in good if n not in chosen]
    if not chosen:
        raise ValueError(f"The backbone of {type(model).__name__} has no Linear or Conv2d layer for peft to adapt.")
    return [f"backbone.{name}" for name in chosen]


def make_peft_config(method: str, target_modules: list[str], r: int = 8, alpha: float = 16, dropout: float = 0.0):
    """The peft config of `method` ('lora', 'loha', 'ia3') over `target_modules` (full module names)."""
    from peft import IA3Config, LoHaConfig, LoraConfig

    if method == "lora":
        return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules)
    if method == "loha":
        return LoHaConfig(r=r, alpha=alpha, module_dropout=dropout, target_modules=target_modules)
    if method == "ia3":
        # IA3 learns one scale per output channel (no rank, no alpha); none of our layers are treated as
        # "feed-forward" (input scaling), so every target scales its output.
        return IA3Config(target_modules=target_modules, feedforward_modules=[])
    raise ValueError(f"unknown peft method {method!r}; known: {', '.join(PEFT_METHODS)}")


def apply_peft(model: nn.Module, method: str, r: int = 8, alpha: float = 16, dropout: float = 0.0,
               target_modules: list[str] | None = None):
    """Wrap `model` (a family model with a `backbone`) in a `peft.PeftModel` whose adapters sit on backbone
    layers. The backbone's own weights are frozen; what trained outside the backbone still trains."""
    from peft import get_peft_model

    config = make_peft_config(method, backbone_target_modules(model, target_modules), r=r, alpha=alpha, dropout=dropout)
    # peft freezes every weight but its adapters; what is not pretrained (the family's heads, the backbone's
    # new layers: random at the start) must still train, as in full fine-tuning.
    new = tuple(f"backbone.{p}" for p in new_backbone_prefixes(model.backbone))
    heads = [p for name, p in model.named_parameters() if p.requires_grad and (not name.startswith("backbone.") or _under(name, new))]
    wrapped = get_peft_model(model, config)
    for param in heads:
        param.requires_grad_(True)
    return wrapped


def peft_from_args(model: nn.Module, args):
    """`apply_peft` with the run's settings (`TrainConfig.peft*`), or `model` unchanged when `args.peft` is None."""
    if not getattr(args, "peft", None):
        return model
    return apply_peft(
        model, args.peft, r=args.peft_r, alpha=args.peft_alpha, dropout=args.peft_dropout,
        target_modules=args.peft_target_modules,
    )


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def adapter_state_dict(peft_model) -> dict[str, torch.Tensor]:
    """What the adapter file holds: peft's adapter weights, plus every weight that is not pretrained (the
    family's heads, the backbone's new layers) and that the base model therefore cannot bring."""
    from peft import get_peft_model_state_dict

    state = dict(get_peft_model_state_dict(peft_model))
    family = peft_model.get_base_model()
    tag = peft_model.base_model.prefix  # "lora_", "hada_", "ia3_": the adapter's own weights
    new = tuple(f"backbone.{p}" for p in new_backbone_prefixes(family.backbone))
    for name, param in family.named_parameters():
        if param.requires_grad and tag not in name:
            state[_PEFT_PREFIX + name] = param.detach()
    for name, buffer in family.named_buffers():
        if not name.startswith("backbone.") or _under(name, new):
            state[_PEFT_PREFIX + name] = buffer.detach()
    return state


def write_adapter_folder(peft_model, folder: str | Path) -> Path:
    """peft's `save_pretrained` folder (`adapter_config.json` + `adapter_model.safetensors`), with the trained
    non-backbone weights added to the safetensors file, plus `base_config.json`: the family config the base
    model is built from (`base_model_for_adapter`)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    peft_model.save_pretrained(folder)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in adapter_state_dict(peft_model).items()}
    save_file(state, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    family = peft_model.get_base_model()
    (folder / "base_config.json").write_text(family.config.to_json_string())
    return folder


def merged_model(peft_model) -> nn.Module:
    """A copy of the family model with the adapters merged into the backbone's weights (one plain model)."""
    import copy

    return copy.deepcopy(peft_model).merge_and_unload()


def base_model_for_adapter(folder: str | Path) -> nn.Module:
    """The untrained family model on its pretrained backbone: what `PeftModel.from_pretrained(base, folder)`
    adds the adapter of `folder` to. Built from `folder/base_config.json` and the backbone it names
    (`backbone_name_or_path`: a Hub id, a folder or 'packaged')."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    import hf_sbir  # noqa: F401  (registers the families with the Auto classes)

    folder = Path(folder)
    data = json.loads((folder / "base_config.json").read_text())
    config = AutoConfig.for_model(data.pop("model_type"), **data)
    name = getattr(config, "backbone_name_or_path", None)
    if not name:
        raise ValueError(
            f"{folder}/base_config.json names no pretrained backbone (the model was built from a backbone config); "
            "build the base model yourself and pass it to PeftModel.from_pretrained."
        )
    skip = ("backbone_config", "backbone_name_or_path", "model_type", "transformers_version", "architectures", "auto_map")
    kwargs = {k: v for k, v in config.to_diff_dict().items() if k not in skip}
    return MODEL_MAPPING[type(config)].from_backbone(name, **kwargs)


def load_adapter_model(folder: str | Path):
    """`PeftModel.from_pretrained(base_model_for_adapter(folder), folder)`, in eval mode."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model_for_adapter(folder), str(folder)).eval()


__all__ = [
    "ADAPTER_SUBFOLDER", "PEFT_METHODS", "apply_peft", "backbone_target_modules", "base_model_for_adapter",
    "is_peft_model", "load_adapter_model", "make_peft_config", "merged_model", "peft_from_args", "write_adapter_folder",
]
