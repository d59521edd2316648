"""Sketch-an-Anchor sketch search: draw (or upload) a sketch, get the closest photos of a gallery.

    python spaces/sketch-an-anchor/app.py --model outputs/quickstart/model --gallery embedded --port 7860

On a Hugging Face Space it starts with the defaults (override with $SKETCH_SEARCH_MODEL /
$SKETCH_SEARCH_GALLERY). The gallery index is built once (progress bar on the first page load) and
cached in ~/.cache/hf_sbir/space_galleries ($HF_SBIR_CACHE moves it).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gradio as gr  # noqa: E402

from sketch_search import (  # noqa: E402
    DEFAULT_MODEL,
    MAX_K,
    SketchSearch,
    SketchSearchError,
    display_image,
    is_blank,
    load_model,
    load_or_build_gallery,
    markdown_text,
    open_upload,
    sketch_from_editor,
)

DESCRIPTION = """# Sketch an anchor ✏️
Draw an object on the canvas (or upload a sketch): the photos of the gallery that match it best
appear on the right, with their class and cosine score. Results update as you draw.
"""


def _progress_callback(progress):
    if progress is None:
        return None
    return lambda fraction, text: progress(fraction, desc=text)


def build_demo(searcher: SketchSearch, default_k: int = 8, gallery_name: str = "embedded") -> gr.Blocks:
    def show(results):
        # PIL images, not paths: Gradio serves only files under the working directory, the temp dir or
        # `allowed_paths`, and a gallery (the embedded cache in ~/.cache, a user's --gallery folder) can be
        # anywhere. Gradio writes these to its own cache, which it always serves.
        return [(display_image(image), f"{label} — {score:.3f}") for image, label, score in results]

    def run(image, k, progress):
        try:
            results = searcher.search(image, int(k), progress=_progress_callback(progress))
        except SketchSearchError as error:
            return [], f"⚠️ {error}"
        except Exception as error:  # never a traceback in the UI
            return [], f"⚠️ Search failed: {type(error).__name__}: {error}"
        note = ""
        if getattr(image, "info", {}).get("downscaled_from"):
            w, h = image.info["downscaled_from"]
            note = f" (your {w}x{h} upload was downscaled)"
        top = results[0]
        return show(results), f"Top match: **{markdown_text(top[1])}** ({top[2]:.3f}) — {len(results)} results{note}."

    def on_sketch(value, k, progress=gr.Progress()):
        image = sketch_from_editor(value)
        if is_blank(image):
            return [], "Draw something on the canvas (or upload a sketch) to search."
        return run(image, k, progress)

    def on_upload(path, k, progress=gr.Progress()):
        if not path:
            return gr.skip(), gr.skip()
        try:
            image = open_upload(path)
        except SketchSearchError as error:
            gr.Warning(str(error))
            return [], f"⚠️ {error}"
        return run(image, k, progress)

    def on_button(value, path, k, progress=gr.Progress()):
        image = sketch_from_editor(value)
        if not is_blank(image):
            return run(image, k, progress)
        if path:
            return on_upload(path, k, progress)
        gr.Warning("The sketch is empty: draw something or upload a sketch.")
        return [], "⚠️ The sketch is empty: draw something (dark strokes on white) or upload a sketch."

    def warm_up(progress=gr.Progress()):
        index = searcher.index(_progress_callback(progress))
        return f"Gallery: **{gallery_name}**, {len(index)} photos. Draw something to search."

    with gr.Blocks(title="Sketch an anchor") as demo:
        gr.Markdown(DESCRIPTION)
        with gr.Row():
            with gr.Column(scale=1):
                sketch = gr.Sketchpad(
                    label="Sketch",
                    type="pil",
                    image_mode="RGBA",
                    canvas_size=(512, 512),
                    brush=gr.Brush(default_size=6, colors=["#000000"], color_mode="fixed"),
                    elem_id="sketchpad",
                )
                upload = gr.File(label="…or upload a sketch image", file_types=["image"], type="filepath", elem_id="upload")
                k = gr.Slider(1, MAX_K, value=default_k, step=1, label="results (k)")
                button = gr.Button("Search", variant="primary", elem_id="search-button")
            with gr.Column(scale=1):
                status = gr.Markdown("Loading the gallery…", elem_id="status")
                results = gr.Gallery(label="Closest photos", columns=4, height="auto", elem_id="results")
        sketch.change(on_sketch, [sketch, k], [results, status], trigger_mode="always_last", show_progress="minimal")
        upload.upload(on_upload, [upload, k], [results, status])
        button.click(on_button, [sketch, upload, k], [results, status])
        demo.load(warm_up, None, status)
    return demo


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("SKETCH_SEARCH_MODEL", DEFAULT_MODEL), help="model folder or Hub id")
    parser.add_argument(
        "--gallery",
        default=os.environ.get("SKETCH_SEARCH_GALLERY", "embedded"),
        help="'embedded' (default data photos), a photo folder, a save_to_disk folder, or NAME[:SPLIT]",
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--k", type=int, default=8, help="default number of results")
    args = parser.parse_args(argv)
    try:
        model, transform = load_model(args.model)
    except SketchSearchError as error:
        sys.exit(f"error: {error}")
    model_dir = model.name_or_path
    searcher = SketchSearch(
        model, transform, lambda progress: load_or_build_gallery(model, transform, model_dir, args.gallery, progress)
    )
    demo = build_demo(searcher, args.k, os.fspath(args.gallery))
    print(f"model: {model_dir}; gallery: {args.gallery}", flush=True)
    demo.queue().launch(server_name=args.host, server_port=args.port, show_error=False)


if __name__ == "__main__":
    main()
