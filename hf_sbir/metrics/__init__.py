"""Retrieval metrics (mAP@k, P@k, Acc@k) under named evaluation protocols, and their `evaluate` modules.

The functions in `retrieval_metrics` are the single implementation; the `evaluate` module scripts
under ``evaluate_modules/`` call them. ``load_metric(name)`` loads a packaged module offline.
"""

from __future__ import annotations

from pathlib import Path

from .retrieval_metrics import (
    AP_KINDS,
    AVERAGES,
    MAP_NORMALIZATIONS,
    PRECISION_NORMALIZATIONS,
    PROTOCOLS,
    RetrievalProtocol,
    accuracy_at_k,
    get_protocol,
    instance_metrics,
    mean_average_precision,
    precision_at_k,
    retrieval_metrics,
)

EVALUATE_MODULES_DIR = Path(__file__).resolve().parent / "evaluate_modules"
METRIC_NAMES = ("sbir_map", "sbir_precision", "sbir_accuracy_at_k")


def evaluate_module_path(name: str) -> str:
    """Folder of the packaged `evaluate` module ``name`` (one of `METRIC_NAMES`)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown SBIR metric {name!r}; available: {list(METRIC_NAMES)}")
    return str(EVALUATE_MODULES_DIR / name)


def load_metric(name: str, **kwargs):
    """``evaluate.load`` of a packaged SBIR metric module; works offline (no Hub access).

    Args:
        name: ``"sbir_map"``, ``"sbir_precision"`` or ``"sbir_accuracy_at_k"``.
        **kwargs: forwarded to `evaluate.load` (e.g. ``keep_in_memory=True``, ``experiment_id``).

    Example:
        >>> metric = load_metric("sbir_map")
        >>> metric.compute(predictions=[[0.9, 0.8, 0.7]], references=[1], gallery_labels=[1, 0, 1])
        {'map@all': 0.8333333333333333}
    """
    import evaluate

    return evaluate.load(evaluate_module_path(name), **kwargs)


__all__ = [
    "AP_KINDS",
    "AVERAGES",
    "PROTOCOLS",
    "RetrievalProtocol",
    "get_protocol",
    "MAP_NORMALIZATIONS",
    "PRECISION_NORMALIZATIONS",
    "METRIC_NAMES",
    "EVALUATE_MODULES_DIR",
    "accuracy_at_k",
    "evaluate_module_path",
    "instance_metrics",
    "load_metric",
    "mean_average_precision",
    "precision_at_k",
    "retrieval_metrics",
]
