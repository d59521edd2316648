"""Rasterise vector sketches (Quick, Draw! ndjson and sketch-rnn stroke-3) into PIL images.

Two stroke formats are understood:

- **QuickDraw simplified ndjson**: a drawing is a list of strokes, each `[xs, ys]` (or `[xs, ys, ts]`
  in the raw format) of absolute coordinates; one JSON object per line with keys `word`,
  `drawing`, `recognized`, ...
- **stroke-3** (sketch-rnn `.npz`): an array of shape `(N, 3)` with rows `(dx, dy, pen_lift)`;
  offsets are relative to the previous point, and `pen_lift == 1` ends the current stroke after
  that point. The `.npz` files hold object arrays `train`, `valid`, `test` of such arrays.

The drawing is scaled to fit `size - 2 * padding` keeping its aspect ratio, centred, and drawn as
black round-capped lines on white at `supersample`x resolution, then down-sampled with Lanczos (the
recipe used to make the sbir-mini QuickDraw rasters).
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw

from hf_sbir.data.processing import EmptySketchError

PathLike = Union[str, os.PathLike]


def _is_stroke3(strokes) -> bool:
    if isinstance(strokes, np.ndarray):
        return strokes.ndim == 2 and strokes.shape[1] == 3 and strokes.dtype != object
    return False


def stroke3_to_polylines(stroke3: np.ndarray) -> list[np.ndarray]:
    """Convert stroke-3 `(N, 3)` offsets into absolute polylines, one `(k, 2)` array per stroke."""
    stroke3 = np.asarray(stroke3, dtype=np.float64)
    points = np.cumsum(stroke3[:, :2], axis=0)
    ends = np.flatnonzero(stroke3[:, 2] > 0.5) + 1
    return [p for p in np.split(points, ends) if len(p)]


def quickdraw_to_polylines(drawing: Sequence) -> list[np.ndarray]:
    """Convert a QuickDraw drawing (`[[xs, ys(, ts)], ...]`) into `(k, 2)` polylines."""
    polylines = []
    for i, stroke in enumerate(drawing):
        if len(stroke) < 2 or len(stroke[0]) != len(stroke[1]):
            raise ValueError(f"QuickDraw stroke {i} must be [xs, ys(, ts)] with equal lengths")
        if len(stroke[0]):
            polylines.append(np.stack([np.asarray(stroke[0], float), np.asarray(stroke[1], float)], axis=1))
    return polylines


def rasterize_strokes(
    strokes,
    size: int = 256,
    line_width: float = 3,
    padding: int = 12,
    supersample: int = 4,
    stroke_format: str = "auto",
) -> Image.Image:
    """Draw a vector sketch as a `size` x `size` grayscale PIL image, black strokes on white.

    Args:
        strokes: a QuickDraw drawing (list of `[xs, ys]`), a stroke-3 array `(N, 3)` (numeric
            ndarray), or, with `stroke_format="polylines"`, a list of `(k, 2)` absolute polylines.
        size: output side in pixels.
        line_width: stroke width in output pixels.
        padding: white margin in output pixels on every side.
        supersample: draw at this factor and down-sample, for anti-aliased strokes (1 = off).
        stroke_format: `"auto"`, `"quickdraw"`, `"stroke3"` or `"polylines"`.

    Returns:
        PIL image, mode `"L"`.

    Raises:
        EmptySketchError: if the sketch has no points.
    """
    if stroke_format == "auto":
        # (k, 2) polylines and [xs, ys] strokes cannot be told apart when k == 2: polylines must be named.
        stroke_format = "stroke3" if _is_stroke3(strokes) else "quickdraw"
    if stroke_format == "stroke3":
        polylines = stroke3_to_polylines(strokes)
    elif stroke_format == "quickdraw":
        polylines = quickdraw_to_polylines(strokes)
    elif stroke_format == "polylines":
        polylines = [np.asarray(p, float).reshape(-1, 2) for p in strokes if len(p)]
    else:
        raise ValueError(f"stroke_format must be 'auto', 'quickdraw', 'stroke3' or 'polylines', got {stroke_format!r}")
    if not polylines:
        raise EmptySketchError("Empty sketch: the drawing has no stroke points")

    allpts = np.concatenate(polylines)
    lo, hi = allpts.min(axis=0), allpts.max(axis=0)
    extent = float((hi - lo).max())
    inner = size - 2 * padding
    if inner <= 0:
        raise ValueError(f"padding {padding} leaves no room in a {size}px image")
    scale = inner / extent if extent > 0 else 1.0
    # Centre the drawing's box in the canvas; then go to the supersampled pixel grid.
    offset = (size - (hi - lo) * scale) / 2.0
    s = supersample
    canvas = Image.new("L", (size * s, size * s), 255)
    draw = ImageDraw.Draw(canvas)
    width = max(1, int(round(line_width * s)))
    radius = width / 2.0
    for line in polylines:
        pts = ((line - lo) * scale + offset) * s
        xy = [tuple(p) for p in pts]
        if len(xy) > 1:
            draw.line(xy, fill=0, width=width, joint="curve")
        # Round caps (and dots for single-point strokes): PIL lines have square ends.
        for x, y in (xy[0], xy[-1]):
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=0)
    if s > 1:
        canvas = canvas.resize((size, size), Image.Resampling.LANCZOS)
    return canvas


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def load_quickdraw_ndjson(
    path: PathLike,
    max_drawings: Optional[int] = None,
    recognized_only: bool = False,
    **raster_kwargs,
) -> list[tuple[Image.Image, str]]:
    """Read a Quick, Draw! `.ndjson` (or `.ndjson.gz`) file and rasterise each drawing.

    Args:
        path: file of one JSON object per line with `drawing` and `word` keys.
        max_drawings: stop after this many (kept) drawings.
        recognized_only: skip drawings whose `recognized` flag is false.
        **raster_kwargs: passed to `rasterize_strokes` (`size`, `line_width`, `padding`, ...).

    Returns:
        list of `(PIL image, word)`.

    Raises:
        ValueError: naming the file and line for a malformed line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"QuickDraw ndjson file not found: {path}")
    out = []
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if recognized_only and not record.get("recognized", True):
                    continue
                image = rasterize_strokes(record["drawing"], stroke_format="quickdraw", **raster_kwargs)
                word = record.get("word", path.stem)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise ValueError(f"Bad QuickDraw record at {path}:{lineno}: {type(err).__name__}: {err}") from err
            out.append((image, word))
            if max_drawings is not None and len(out) >= max_drawings:
                break
    return out


def load_quickdraw_npz(
    path: PathLike,
    split: str = "train",
    max_sketches: Optional[int] = None,
    allow_pickle: bool = False,
    **raster_kwargs,
) -> list[tuple[Image.Image, str]]:
    """Read a sketch-rnn stroke-3 `.npz` (keys `train`/`valid`/`test`) and rasterise one split.

    The official files store ragged object arrays, which NumPy can only read with pickle; pickle can
    run code, so pass `allow_pickle=True` only for files you trust. The word is the file stem
    (`cat.npz` -> `"cat"`).

    Returns:
        list of `(PIL image, word)`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"stroke-3 npz file not found: {path}")
    try:
        with np.load(path, encoding="latin1", allow_pickle=allow_pickle) as data:
            if split not in data.files:
                raise KeyError(f"{path} has no {split!r} array (it has: {', '.join(data.files)})")
            sketches = data[split]
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise ValueError(
                f"{path} stores object arrays, which need allow_pickle=True to read; "
                "pass it only for files from a trusted source."
            ) from err
        raise
    if sketches.dtype != object and sketches.ndim == 2:
        sketches = [sketches]  # a single (N, 3) sketch saved as a plain array
    word = path.name.split(".")[0]
    n = len(sketches) if max_sketches is None else min(max_sketches, len(sketches))
    return [
        (rasterize_strokes(np.asarray(sketches[i]), stroke_format="stroke3", **raster_kwargs), word) for i in range(n)
    ]
