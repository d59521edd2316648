"""Retrieval metrics for sketch-based image retrieval: mAP@k, P@k and instance Acc@k.

Every function takes a similarity matrix ``scores`` of shape ``(Q, G)`` (Q queries, G gallery
items, *higher is better*; cosine similarity in this package) and labels or target indices, and is a
pure function of its arguments (torch tensors, any device; on CPU the ranking sort runs in numpy,
see `ranking_order`).

Conventions shared by every function in this module
---------------------------------------------------
* **Ranking and ties.** Each query's gallery is ranked by a *stable* sort on score, descending;
  items with equal scores keep gallery order, so the tie is broken by **gallery index, ascending**.
  The result is deterministic and independent of the chunk size. ``NaN`` scores raise a
  ``ValueError`` (a NaN has no place in a ranking); ``-inf`` is allowed and ranks last.
* **Relevance.** Gallery item ``j`` is relevant to query ``i`` iff
  ``gallery_labels[j] == query_labels[i]`` (category-level retrieval). Labels may be integer
  tensors/arrays or any sequences of hashable values (e.g. class-name strings); non-integer labels
  are mapped to integers jointly for both sides.
* **R** is the number of relevant items in the gallery for a query; **hits@k** is the number of
  relevant items among its top k.
* **Averaging.** Means are over queries (every query weighs the same, the convention of the
  zero-shot SBIR tables); `retrieval_metrics` also returns the per-class means.
* **Gallery smaller than k.** ``k`` is clipped to the gallery size ``G`` (``G - 1`` with
  ``exclude_self``): P@k of a 50-item gallery with ``k=100`` is hits@50 / 50, and AP@k equals AP
  over the whole ranking with the same normaliser rule.
* **Queries with no relevant item in the gallery** (R = 0), ``no_relevant=``:
  ``"zero"`` (default) scores such a query 0 for every metric and keeps it in the mean, so the mean
  is over all Q queries and such queries can only lower the score; ``"exclude"`` leaves them out
  of the mean (per-query values are ``NaN``; a mean over no query at all is ``NaN``). In standard
  zero-shot SBIR splits every query class is present in the gallery and both choices agree.
* **exclude_self** (queries and gallery are the same set, e.g. photo-to-photo retrieval): query
  ``i`` is removed from its own gallery, i.e. the ranking and R are computed over the other
  ``G - 1`` items. This is not the same as setting the diagonal to ``-inf``, which would keep the
  item in R and in the ranking (last).
* **Memory.** Queries are processed in chunks (``chunk_size`` queries at a time; by default as
  many as keep one chunk near 4M matrix entries, about 250 MB of temporaries), so a 20k x 100k
  score matrix is evaluated without a Q x G sort buffer. Only the score matrix itself must fit.

Average precision
-----------------
For one query with ranked relevance ``rel_1 .. rel_G`` and ``P@i = hits@i / i``:

* ``AP@all = (1 / R) * sum_{i<=G} P@i * rel_i`` -- the textbook (TREC) definition.
* ``AP@k = (1 / N_k) * sum_{i<=k} P@i * rel_i``, where the normaliser ``N_k`` is chosen by
  ``normalize=``:

  - ``"retrieved"`` (default): ``N_k = hits@k``, the number of relevant items *retrieved* in the
    top k. This is the mAP@200 of the zero-shot SBIR literature that follows SEM-PCYC (Dutta &
    Akata, CVPR 2019): its ``apsak`` helper (``AnjanDutta/sem-pcyc``, ``src/utils.py``) runs
    ``sklearn.metrics.average_precision_score`` on each query's top-k list, i.e. divides by the
    relevant items in that list, and gives 0 to a query with none. Numbers computed here are
    comparable with those tables (up to exact score ties, which sklearn groups into one
    threshold). A query with R > 0 but hits@k = 0 gets AP@k = 0, as there.
  - ``"min_k_relevant"``: ``N_k = min(k, R)``; never larger than 1 and penalises relevant items
    missing from the top k. This is the normaliser of SAKE's ``eval_AP_inner(..., top=k)``
    (``qliu24/SAKE``) -- note that SAKE also uses VOC-style *interpolated* precision, which this
    module does not, so SAKE's numbers can be slightly higher.
  - ``"total_relevant"``: ``N_k = R``; with k >= G this equals AP@all.

  With ``k=None`` (AP over the whole ranking) all three give ``AP@all``.

Precision
---------
* ``P@k = hits@k / k`` (``normalize="k"``, default, the textbook definition).
* ``normalize="min_k_relevant"``: ``hits@k / min(k, R)``, which reaches 1 when a class has
  fewer than k gallery items and all of them are in the top k.

Instance-level accuracy
-----------------------
``Acc@k`` = share of queries whose one true gallery item (``target_index[i]``) is among the top k,
with the same ranking and tie rule (the target loses ties against lower gallery indices).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, Literal

import torch

__all__ = [
    "mean_average_precision",
    "precision_at_k",
    "accuracy_at_k",
    "retrieval_metrics",
    "instance_metrics",
    "MAP_NORMALIZATIONS",
    "PRECISION_NORMALIZATIONS",
]

MAP_NORMALIZATIONS = ("retrieved", "min_k_relevant", "total_relevant")
PRECISION_NORMALIZATIONS = ("k", "min_k_relevant")
_NO_RELEVANT = ("zero", "exclude")
# Score-matrix entries per query chunk; each entry needs about 60 bytes of temporaries.
_CHUNK_ELEMENTS = 1 << 22

MapNormalize = Literal["retrieved", "min_k_relevant", "total_relevant"]
PrecisionNormalize = Literal["k", "min_k_relevant"]
NoRelevant = Literal["zero", "exclude"]


# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------
def _as_scores(scores: Any) -> torch.Tensor:
    scores = torch.as_tensor(scores)
    if scores.dim() != 2:
        raise ValueError(f"`scores` must be a 2-D (queries, gallery) matrix, got shape {tuple(scores.shape)}")
    if scores.shape[1] == 0:
        raise ValueError("`scores` has an empty gallery (G = 0)")
    if not torch.is_floating_point(scores):
        scores = scores.double()  # exact for integer scores up to 2**53
    return scores


def _is_integer_tensor(x: Any) -> bool:
    try:
        t = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError):
        return False
    return t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool)


def encode_labels(query_labels: Any, gallery_labels: Any) -> tuple[torch.Tensor, torch.Tensor, list | None]:
    """Return ``(query_ids, gallery_ids, names)``: int64 label tensors for both sides.

    Integer labels (tensors, arrays, lists of ints) are used as they are and ``names`` is None.
    Any other labels (e.g. class-name strings) are mapped jointly to ``0..C-1`` in sorted order
    (first-seen order if the values are not mutually comparable); ``names[c]`` is the original value.
    """
    if _is_integer_tensor(query_labels) and _is_integer_tensor(gallery_labels):
        q = torch.as_tensor(query_labels).long().reshape(-1)
        g = torch.as_tensor(gallery_labels).long().reshape(-1)
        return q, g, None
    q_list, g_list = list(query_labels), list(gallery_labels)
    seen = dict.fromkeys(q_list + g_list)
    try:
        names = sorted(seen)
    except TypeError:
        names = list(seen)
    to_id = {name: i for i, name in enumerate(names)}
    q = torch.tensor([to_id[x] for x in q_list], dtype=torch.long)
    g = torch.tensor([to_id[x] for x in g_list], dtype=torch.long)
    return q, g, names


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}")


def _check_k(k: Any, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {k!r}")
    return k


def exclude_indices(exclude_self: bool, num_queries: int, num_gallery: int) -> torch.Tensor | None:
    """``arange(Q)`` (query i drops gallery item i) when ``exclude_self``, else None; validates sizes."""
    if not exclude_self:
        return None
    if num_queries != num_gallery:
        raise ValueError(
            f"exclude_self=True needs the same set on both sides, got {num_queries} queries and "
            f"{num_gallery} gallery items"
        )
    if num_gallery < 2:
        raise ValueError("exclude_self=True needs a gallery of at least 2 items")
    return torch.arange(num_queries)


def default_chunk(num_gallery: int, chunk_size: int | None) -> int:
    """Queries per chunk: ``chunk_size`` if given, else about 4M score entries' worth."""
    if chunk_size is not None:
        return _check_k(chunk_size, "chunk_size")
    return max(1, _CHUNK_ELEMENTS // max(num_gallery, 1))


def _check_finite(chunk: torch.Tensor) -> None:
    if torch.isnan(chunk).any():
        raise ValueError("`scores` contains NaN; rankings are undefined (replace NaN with -inf to rank last)")


# --------------------------------------------------------------------------------------------
# per-query statistics (the only place that sorts)
# --------------------------------------------------------------------------------------------
def ranking_order(scores: torch.Tensor) -> torch.Tensor:
    """Gallery indices of each row, best first: score descending, ties by index ascending.

    Equivalent to ``torch.sort(scores, dim=1, descending=True, stable=True).indices``. On CPU it
    sorts unique int64 keys ``(order-preserving score bits) << 32 | index`` with numpy instead,
    which is several times faster than torch's stable CPU sort and gives the same order
    (``-0.0`` and ``0.0`` count as equal, as they compare equal).
    """
    fast = scores.device.type == "cpu" and scores.dtype == torch.float32 and sys.byteorder == "little"
    if not fast or scores.shape[1] >= 2**31:
        return torch.sort(scores, dim=1, descending=True, stable=True).indices
    import numpy as np

    values = scores.detach().numpy() + np.float32(0.0)  # (-0.0 + 0.0 = 0.0)
    bits = values.view(np.int32)
    # IEEE floats order like sign-magnitude ints; flipping the magnitude bits of negatives makes
    # them order like two's-complement ints. `~` reverses that order (descending scores) without
    # overflow. Key = high word ~bits, low word the index (ties: index ascending).
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    keys = np.empty(values.shape + (2,), dtype=np.int32)  # little-endian: [low word, high word]
    keys[..., 0] = np.arange(values.shape[1], dtype=np.int32)
    np.invert(ordered, out=keys[..., 1])
    keys = keys.view(np.int64).reshape(values.shape)
    keys.sort(axis=1)
    return torch.from_numpy(keys & 0xFFFFFFFF)


def chunk_ranking_stats(
    scores: torch.Tensor,
    query_ids: torch.Tensor,
    gallery_ids: torch.Tensor,
    ks: Sequence[int],
    exclude_index: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Sufficient statistics for every label metric of one chunk of queries.

    Args:
        scores: ``(c, G)`` similarities for ``c`` queries.
        query_ids: ``(c,)`` int64 labels. gallery_ids: ``(G,)`` int64 labels.
        ks: cut-offs to report (clipped to the effective gallery size).
        exclude_index: ``(c,)`` gallery index to drop from each query's gallery, or None.

    Returns:
        dict of ``(c,)`` tensors on CPU: ``num_relevant`` (R), ``ap_sum`` (sum_i P@i rel_i over the
        whole ranking, float64), and per k ``hits@k`` and ``ap_sum@k``; plus ``gallery_size``
        (a 0-d tensor: G, or G - 1 with an exclusion).
    """
    _check_finite(scores)
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()  # exact; CPU sorts are slow in half precision
    num_gallery = scores.shape[1]
    order = ranking_order(scores)
    if exclude_index is not None:
        keep = order != exclude_index.to(order.device)[:, None]
        order = order[keep].view(scores.shape[0], num_gallery - 1)
        num_gallery -= 1
    rel = gallery_ids.to(order.device)[order] == query_ids.to(order.device)[:, None]
    del order
    hits = rel.cumsum(dim=1)
    ranks = torch.arange(1, num_gallery + 1, device=rel.device, dtype=torch.float64)
    cum_prec = torch.where(rel, hits / ranks, 0.0).cumsum(dim=1)
    out = {
        "num_relevant": hits[:, -1].cpu(),
        "ap_sum": cum_prec[:, -1].cpu(),
        "gallery_size": torch.tensor(num_gallery),
    }
    for k in ks:
        kk = min(k, num_gallery)
        out[f"hits@{k}"] = hits[:, kk - 1].cpu()
        out[f"ap_sum@{k}"] = cum_prec[:, kk - 1].cpu()
    return out


def ranking_stats(
    scores: Any,
    query_ids: torch.Tensor,
    gallery_ids: torch.Tensor,
    ks: Sequence[int],
    exclude_self: bool = False,
    chunk_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """`chunk_ranking_stats` over all queries of ``scores``, ``chunk_size`` queries at a time."""
    scores = _as_scores(scores)
    num_queries, num_gallery = scores.shape
    if query_ids.shape[0] != num_queries:
        raise ValueError(f"got {query_ids.shape[0]} query labels for {num_queries} score rows")
    if gallery_ids.shape[0] != num_gallery:
        raise ValueError(f"got {gallery_ids.shape[0]} gallery labels for {num_gallery} score columns")
    exclude = exclude_indices(exclude_self, num_queries, num_gallery)
    step = default_chunk(num_gallery, chunk_size)
    parts = []
    for start in range(0, num_queries, step):
        stop = min(start + step, num_queries)
        parts.append(
            chunk_ranking_stats(
                scores[start:stop],
                query_ids[start:stop],
                gallery_ids,
                ks,
                None if exclude is None else exclude[start:stop],
            )
        )
    return merge_stats(parts, ks, num_gallery - (1 if exclude_self else 0))


def merge_stats(parts: list[dict[str, torch.Tensor]], ks: Sequence[int], gallery_size: int) -> dict[str, torch.Tensor]:
    """Concatenate the per-chunk outputs of `chunk_ranking_stats`."""
    keys = ["num_relevant", "ap_sum"] + [f"{p}@{k}" for k in ks for p in ("hits", "ap_sum")]
    if not parts:
        out = {key: torch.zeros(0, dtype=torch.float64) for key in keys}
    else:
        out = {key: torch.cat([p[key] for p in parts]) for key in keys}
    out["gallery_size"] = torch.tensor(gallery_size)
    return out


# --------------------------------------------------------------------------------------------
# from statistics to per-query values
# --------------------------------------------------------------------------------------------
def _apply_no_relevant(values: torch.Tensor, num_relevant: torch.Tensor, no_relevant: str) -> torch.Tensor:
    none = num_relevant == 0
    return values.masked_fill(none, 0.0 if no_relevant == "zero" else float("nan"))


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    den = den.to(torch.float64)
    return torch.where(den > 0, num.to(torch.float64) / den.clamp(min=1), torch.zeros((), dtype=torch.float64))


def average_precision_from_stats(
    stats: dict[str, torch.Tensor], k: int | None, normalize: str, no_relevant: str
) -> torch.Tensor:
    """Per-query AP (float64, ``(Q,)``) from `ranking_stats` output; see the module docstring."""
    r = stats["num_relevant"]
    if k is None:
        ap = _safe_div(stats["ap_sum"], r)
    else:
        kk = min(k, int(stats["gallery_size"]))
        total = stats[f"ap_sum@{k}"]
        if normalize == "retrieved":
            ap = _safe_div(total, stats[f"hits@{k}"])
        elif normalize == "min_k_relevant":
            ap = _safe_div(total, r.clamp(max=kk))
        else:
            ap = _safe_div(total, r)
    return _apply_no_relevant(ap, r, no_relevant)


def precision_from_stats(stats: dict[str, torch.Tensor], k: int, normalize: str, no_relevant: str) -> torch.Tensor:
    """Per-query P@k (float64, ``(Q,)``) from `ranking_stats` output; see the module docstring."""
    r = stats["num_relevant"]
    kk = min(k, int(stats["gallery_size"]))
    hits = stats[f"hits@{k}"]
    if normalize == "k":
        p = hits.to(torch.float64) / kk
    else:
        p = _safe_div(hits, r.clamp(max=kk))
    return _apply_no_relevant(p, r, no_relevant)


def _reduce(values: torch.Tensor, reduction: str) -> float | torch.Tensor:
    if reduction == "none":
        return values
    if values.numel() == 0 or torch.isnan(values).all():
        return float("nan")
    return float(torch.nanmean(values))


# --------------------------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------------------------
def mean_average_precision(
    scores: Any,
    query_labels: Any,
    gallery_labels: Any,
    k: int | None = None,
    *,
    normalize: MapNormalize = "retrieved",
    no_relevant: NoRelevant = "zero",
    exclude_self: bool = False,
    reduction: Literal["mean", "none"] = "mean",
    chunk_size: int | None = None,
) -> float | torch.Tensor:
    """Mean average precision (mAP@all, or mAP@k) of a category-level retrieval.

    Args:
        scores: ``(Q, G)`` similarities, higher = better.
        query_labels: ``(Q,)`` class of each query. gallery_labels: ``(G,)`` class of each item.
        k: cut-off; ``None`` (default) = the whole ranking, i.e. textbook ``AP = (1/R) sum P@i rel_i``.
            Clipped to the gallery size.
        normalize: the AP@k normaliser (ignored when ``k is None``): ``"retrieved"`` (default,
            divide by the number of relevant items in the top k -- the SEM-PCYC convention behind
            most published zero-shot SBIR mAP@200), ``"min_k_relevant"`` (divide by ``min(k, R)``)
            or ``"total_relevant"`` (divide by ``R``).
        no_relevant: ``"zero"`` (default; a query whose class is absent from the gallery scores 0
            and counts in the mean) or ``"exclude"`` (left out of the mean; NaN per query).
        exclude_self: queries and gallery are the same set; drop query i from its own gallery.
        reduction: ``"mean"`` (a float) or ``"none"`` (a float64 ``(Q,)`` tensor of per-query AP).
        chunk_size: queries ranked at a time (default: about 4M score entries per chunk).

    Ties are broken by gallery index (ascending) -- see the module docstring.
    """
    _check_choice("normalize", normalize, MAP_NORMALIZATIONS)
    _check_choice("no_relevant", no_relevant, _NO_RELEVANT)
    _check_choice("reduction", reduction, ("mean", "none"))
    ks = [] if k is None else [_check_k(k)]
    q, g, _ = encode_labels(query_labels, gallery_labels)
    stats = ranking_stats(scores, q, g, ks, exclude_self=exclude_self, chunk_size=chunk_size)
    return _reduce(average_precision_from_stats(stats, k, normalize, no_relevant), reduction)


def precision_at_k(
    scores: Any,
    query_labels: Any,
    gallery_labels: Any,
    k: int,
    *,
    normalize: PrecisionNormalize = "k",
    no_relevant: NoRelevant = "zero",
    exclude_self: bool = False,
    reduction: Literal["mean", "none"] = "mean",
    chunk_size: int | None = None,
) -> float | torch.Tensor:
    """Mean precision at k of a category-level retrieval.

    ``P@k = (relevant items in the top k) / k`` (``normalize="k"``, default, textbook); the named
    variant ``normalize="min_k_relevant"`` divides by ``min(k, R)`` instead. When the gallery has
    fewer than k items, k is clipped to the gallery size ``G`` (so P@k = hits@G / G). Other
    arguments as in `mean_average_precision`; ties are broken by gallery index (ascending).
    """
    _check_choice("normalize", normalize, PRECISION_NORMALIZATIONS)
    _check_choice("no_relevant", no_relevant, _NO_RELEVANT)
    _check_choice("reduction", reduction, ("mean", "none"))
    k = _check_k(k)
    q, g, _ = encode_labels(query_labels, gallery_labels)
    stats = ranking_stats(scores, q, g, [k], exclude_self=exclude_self, chunk_size=chunk_size)
    return _reduce(precision_from_stats(stats, k, normalize, no_relevant), reduction)


def chunk_target_ranks(
    scores: torch.Tensor, target_index: torch.Tensor, exclude_index: torch.Tensor | None = None
) -> torch.Tensor:
    """0-based rank of each query's target item under the module's tie rule, ``(c,)`` int64 on CPU.

    The rank counts the items that beat the target: a higher score, or an equal score at a lower
    gallery index. The excluded item (``exclude_index``) never counts.
    """
    _check_finite(scores)
    target_index = target_index.to(scores.device)
    num_gallery = scores.shape[1]
    target_score = scores.gather(1, target_index[:, None])
    position = torch.arange(num_gallery, device=scores.device)[None, :]
    beats = (scores > target_score) | ((scores == target_score) & (position < target_index[:, None]))
    if exclude_index is not None:
        exclude_index = exclude_index.to(scores.device)
        if (exclude_index == target_index).any():
            raise ValueError("a query's target is its own excluded (self) item")
        beats.scatter_(1, exclude_index[:, None], False)
    return beats.sum(dim=1).cpu()


def target_ranks(
    scores: Any, target_index: Any, exclude_self: bool = False, chunk_size: int | None = None
) -> torch.Tensor:
    """`chunk_target_ranks` over all queries, ``chunk_size`` at a time; validates ``target_index``."""
    scores = _as_scores(scores)
    num_queries, num_gallery = scores.shape
    target = torch.as_tensor(target_index).long().reshape(-1)
    if target.shape[0] != num_queries:
        raise ValueError(f"got {target.shape[0]} target indices for {num_queries} score rows")
    if target.numel() and (target.min() < 0 or target.max() >= num_gallery):
        raise ValueError(f"`target_index` values must lie in [0, {num_gallery}); got {target.min()}..{target.max()}")
    exclude = exclude_indices(exclude_self, num_queries, num_gallery)
    step = default_chunk(num_gallery, chunk_size)
    parts = [
        chunk_target_ranks(
            scores[s : s + step], target[s : s + step], None if exclude is None else exclude[s : s + step]
        )
        for s in range(0, num_queries, step)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def accuracy_at_k(
    scores: Any,
    target_index: Any,
    k: int,
    *,
    exclude_self: bool = False,
    reduction: Literal["mean", "none"] = "mean",
    chunk_size: int | None = None,
) -> float | torch.Tensor:
    """Instance-level Acc@k: share of queries whose true gallery item is among the top k.

    Args:
        scores: ``(Q, G)`` similarities. target_index: ``(Q,)`` gallery index of each query's
            one true match (e.g. the photo a fine-grained sketch was drawn from).
        k: cut-off, clipped to the gallery size. Ties: the target loses against items with the same
            score and a lower gallery index (the module's tie rule), so ties never inflate Acc@k.
        reduction: ``"mean"`` (a float) or ``"none"`` (a float64 ``(Q,)`` 0/1 tensor).
    """
    _check_choice("reduction", reduction, ("mean", "none"))
    k = _check_k(k)
    ranks = target_ranks(scores, target_index, exclude_self=exclude_self, chunk_size=chunk_size)
    return _reduce((ranks < k).to(torch.float64), reduction)


def check_metric_options(
    map_ks: Sequence[int], precision_ks: Sequence[int], map_normalize: str, precision_normalize: str, no_relevant: str
) -> tuple[list[int], list[int]]:
    """Validate the options of `retrieval_metrics`; returns the cut-offs as lists."""
    _check_choice("map_normalize", map_normalize, MAP_NORMALIZATIONS)
    _check_choice("precision_normalize", precision_normalize, PRECISION_NORMALIZATIONS)
    _check_choice("no_relevant", no_relevant, _NO_RELEVANT)
    return [_check_k(k, "map_ks") for k in map_ks], [_check_k(k, "precision_ks") for k in precision_ks]


def summarize_stats(
    stats: dict[str, torch.Tensor],
    query_ids: torch.Tensor,
    gallery_ids: torch.Tensor,
    names: list | None,
    map_ks: Sequence[int],
    precision_ks: Sequence[int],
    map_normalize: str,
    precision_normalize: str,
    no_relevant: str,
    per_class: bool,
) -> dict[str, Any]:
    """The `retrieval_metrics` dict from `ranking_stats` output (shared with `evaluate_retrieval`)."""
    per_query = {"map@all": average_precision_from_stats(stats, None, map_normalize, no_relevant)}
    for k in map_ks:
        per_query[f"map@{k}"] = average_precision_from_stats(stats, k, map_normalize, no_relevant)
    for k in precision_ks:
        per_query[f"p@{k}"] = precision_from_stats(stats, k, precision_normalize, no_relevant)
    result: dict[str, Any] = {name: _reduce(values, "mean") for name, values in per_query.items()}
    result["num_queries"] = int(query_ids.numel())
    result["num_gallery"] = int(gallery_ids.numel())
    if no_relevant == "exclude":
        result["num_excluded_queries"] = int((stats["num_relevant"] == 0).sum())
    if per_class:
        rows = []
        for c in torch.unique(query_ids).tolist():
            mask = query_ids == c
            row: dict[str, Any] = {
                "label": names[c] if names is not None else c,
                "num_queries": int(mask.sum()),
                "num_gallery_relevant": int((gallery_ids == c).sum()),
            }
            for name, values in per_query.items():
                row[name] = _reduce(values[mask], "mean")
            rows.append(row)
        result["per_class"] = rows
    return result


def retrieval_metrics(
    scores: Any,
    query_labels: Any,
    gallery_labels: Any,
    map_ks: Sequence[int] = (200,),
    precision_ks: Sequence[int] = (100, 200),
    *,
    map_normalize: MapNormalize = "retrieved",
    precision_normalize: PrecisionNormalize = "k",
    no_relevant: NoRelevant = "zero",
    exclude_self: bool = False,
    per_class: bool = True,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """Every category-level metric from one ranking pass.

    Returns a dict with ``"map@all"``, ``"map@{k}"`` for each ``map_ks``, ``"p@{k}"`` for each
    ``precision_ks`` (floats), ``"num_queries"``, ``"num_gallery"`` (and ``"num_excluded_queries"``
    when ``no_relevant="exclude"``), and, with ``per_class=True``, ``"per_class"``: a list of
    dicts, one per query class (sorted), with ``label``, ``num_queries``, ``num_gallery_relevant``
    and the same metric keys averaged over that class's queries. Defaults give the zero-shot SBIR
    set: mAP@all, mAP@200, P@100, P@200. Arguments as in `mean_average_precision` /
    `precision_at_k`.
    """
    map_ks, precision_ks = check_metric_options(map_ks, precision_ks, map_normalize, precision_normalize, no_relevant)
    q, g, names = encode_labels(query_labels, gallery_labels)
    ks = sorted(set(map_ks) | set(precision_ks))
    stats = ranking_stats(scores, q, g, ks, exclude_self=exclude_self, chunk_size=chunk_size)
    return summarize_stats(
        stats, q, g, names, map_ks, precision_ks, map_normalize, precision_normalize, no_relevant, per_class
    )


def instance_metrics(
    scores: Any,
    target_index: Any,
    ks: Sequence[int] = (1, 5, 10),
    *,
    exclude_self: bool = False,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Instance-level (fine-grained) metrics: ``{"acc@1": ..., "acc@5": ..., "acc@10": ...}``."""
    ks = check_ks(ks)
    ranks = target_ranks(scores, target_index, exclude_self=exclude_self, chunk_size=chunk_size)
    return ranks_to_accuracy(ranks, ks)


def check_ks(ks: Sequence[int], name: str = "ks") -> list[int]:
    """Validate a list of cut-offs (positive integers)."""
    return [_check_k(k, name) for k in ks]


def ranks_to_accuracy(ranks: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    """``{"acc@k": share of ranks < k}`` for 0-based target ranks."""
    return {f"acc@{k}": _reduce((ranks < k).to(torch.float64), "mean") for k in ks}
