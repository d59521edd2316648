"""Latency of one sketch query in the Space (spaces/sketch-an-anchor), after start-up.

A Sketch-an-Anchor model with the packaged offline backbone (EfficientNet-Lite0 hybrid, untrained
head) at the default image size (224), the transform the trainer builds, a 10k-photo gallery of random
L2-normalised embeddings in a `GalleryIndex`, and a real drawn sketch. Prints a markdown table of the
median over ``--repeats`` runs (after one warm-up) of: model forward (transform + forward), index
search, and the whole `SketchSearch.search` call.

    python benchmarks/bench_space_search.py
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from _machine import median_ms  # benchmarks/ is on sys.path when a script runs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "spaces" / "sketch-an-anchor"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gallery-size", type=int, default=10_000)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--k", type=int, default=8)
    args = parser.parse_args(argv)

    from hf_sbir import SketchAnAnchorModel
    from hf_sbir.backbones.processing import image_processor_for_backbone
    from hf_sbir.data import SbirImageTransform
    from hf_sbir.retrieval import GalleryIndex
    from sketch_search import SketchSearch

    model = SketchAnAnchorModel.from_backbone("packaged").eval()
    processor = image_processor_for_backbone(model.config.backbone_config, image_size=args.image_size)
    transform = SbirImageTransform(image_processor=processor, image_size=args.image_size, empty_sketch="keep")
    dim = model.config.projection_dim if hasattr(model.config, "projection_dim") else 512
    with torch.no_grad():
        dim = model(pixel_values=torch.zeros(1, 3, args.image_size, args.image_size)).embeddings.shape[1]
    g = torch.Generator().manual_seed(0)
    embeddings = torch.nn.functional.normalize(torch.randn(args.gallery_size, dim, generator=g), dim=1)
    index = GalleryIndex(embeddings, [{"path": f"photo_{i}.png", "label": f"class_{i % 100}"} for i in range(args.gallery_size)])
    searcher = SketchSearch(model, transform, index)

    sketch = Image.new("RGBA", (512, 512), (255, 255, 255, 0))
    draw = ImageDraw.Draw(sketch)
    draw.ellipse((120, 100, 400, 380), outline=(0, 0, 0, 255), width=6)
    draw.line((260, 380, 260, 470), fill=(0, 0, 0, 255), width=6)
    query = searcher.embed_sketch(sketch)

    forward_ms = median_ms(lambda: searcher.embed_sketch(sketch), args.repeats)
    search_ms = median_ms(lambda: index.search(query, k=args.k), args.repeats)
    total_ms = median_ms(lambda: searcher.search(sketch, args.k), args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, nproc={os.cpu_count()}; packaged backbone, "
          f"image {args.image_size}px, gallery {args.gallery_size} x {dim}, top-{args.k}, median of {args.repeats}\n")
    print("| step | ms |\n|---|---|")
    print(f"| model forward (transform + forward) | {forward_ms:.1f} |")
    print(f"| index search | {search_ms:.2f} |")
    print(f"| total (`SketchSearch.search`) | {total_ms:.1f} |")


if __name__ == "__main__":
    main()
