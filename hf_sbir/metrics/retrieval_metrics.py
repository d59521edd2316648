"""Retrieval metrics for sketch-based image retrieval: mAP@k, P@k and instance Acc@k, under named
evaluation protocols that reproduce the numbers of published zero-shot SBIR code.

Every function takes a similarity matrix ``scores`` of shape ``(Q, G)`` (Q queries, G gallery
items, *higher is better*; cosine similarity in this package) and labels or target indices, and is a
pure function of its arguments (torch tensors, any device; on CPU the ranking sort runs in numpy,
see `ranking_order`).

Conventions shared by every function in this module
---------------------------------------------------
* **Ranking and ties.** Each query's gallery is ranked by a *stable* sort on score, descending;
  items with equal scores keep gallery order, so the tie is broken by **gallery index, ascending**.
  The result is deterministic and independent of the chunk size. ``NaN`` scores raise a
  ``ValueError`` (a NaN has no place in a ranking); ``-inf`` is allowed and ranks last. (The
  published code ranks with ``np.argsort``, whose default sort is not stable: on exact ties its
  numbers depend on numpy's internals; ours do not.)
* **Relevance.** Gallery item ``j`` is relevant to query ``i`` iff
  ``gallery_labels[j] == query_labels[i]`` (category-level retrieval). Labels may be integer
  tensors/arrays or any sequences of hashable values (e.g. class-name strings); non-integer labels
  are mapped to integers jointly for both sides.
* **R** is the number of relevant items in the gallery for a query; **hits@k** is the number of
  relevant items among its top k; ``P@i = hits@i / i``.
* **Gallery smaller than k.** ``k`` is clipped to the gallery size ``G`` (``G - 1`` with
  ``exclude_self``), as every protocol below does (``min(top, tot)`` in their code).
* **exclude_self** (queries and gallery are the same set, e.g. photo-to-photo retrieval): query
  ``i`` is removed from its own gallery, i.e. the ranking and R are computed over the other
  ``G - 1`` items. This is not the same as setting the diagonal to ``-inf``, which would keep the
  item in R and in the ranking (last).
* **Memory.** Queries are processed in chunks (``chunk_size`` queries at a time; by default as
  many as keep one chunk near 4M matrix entries, a few hundred MB of temporaries), so a
  20k x 100k score matrix is evaluated without a Q x G sort buffer. Only the score matrix itself
  must fit; `hf_sbir.retrieval.evaluate_embeddings` does not even need that (it scores chunks of
  queries from the embeddings).

Average precision (``average_precision=``)
------------------------------------------
For one query with ranked relevance ``rel_1 .. rel_G``, AP@all and AP@k (top k only) are
``(1 / N) * sum_{i <= cut} p_i * rel_i`` where the precision term ``p_i`` is:

* ``"trec"``: ``P@i`` -- the textbook (TREC) definition;
* ``"voc"``: the VOC-*interpolated* precision ``max_{i <= j <= cut} P@j`` (the best precision at
  rank i or any later rank of the list), i.e. the area under the interpolated precision-recall
  curve of ``VOCap`` in SAKE / DSN / TC-Net / ZSE-SBIR;
* ``"sklearn"``: ``P@e(i)`` with ``e(i)`` the last rank of the group of items tied with item i
  (clipped to the cut) -- ``sklearn.metrics.average_precision_score``, which takes one threshold
  per distinct score, as SEM-PCYC and Doodle2Search call it.

The normaliser of AP@all is ``N = R``. The normaliser of AP@k (``map_normalize=``):

* ``"retrieved"``: ``N = hits@k``, the relevant items retrieved in the top k (what
  ``average_precision_score`` on the top-k list computes); a query with hits@k = 0 gets 0;
* ``"min_k_relevant"``: ``N = min(k, R)`` (SAKE's ``eval_AP_inner(..., top=k)``: ``tot_pos =
  min(top, tot_pos)``); never above 1, penalises relevant items missing from the top k;
* ``"total_relevant"``: ``N = R``.

Precision at k (``precision_normalize=``)
-----------------------------------------
* ``"k"``: ``hits@k / k`` (textbook; SAKE's ``eval_precision``, SEM-PCYC's ``prec``);
* ``"min_k_relevant"``: ``hits@k / min(k, R)`` (Doodle2Search's ``prec``);
* ``"hits_at_min_k_relevant"``: ``hits@min(k, R) / min(k, R)`` (ZSE-SBIR's ``precision_eval``:
  the top ``min(k, R)`` items only, an R-precision capped at k).

Queries with no relevant item (R = 0), ``no_relevant=``: ``"zero"`` scores them 0 and keeps them
in the mean; ``"exclude"`` leaves them out (per-query NaN, ``np.nanmean`` as the VOC-style code
does). Averaging, ``average=``: ``"query"`` (every query weighs the same) or ``"class"`` (the mean
over query classes of each class's mean, as DSN and TC-Net report).

Protocols (``protocol=``)
-------------------------
A protocol names one combination of the settings above and the cut-offs it reports; each returns
``"map@all"``, ``"map@200"``, ``"p@100"``, ``"p@200"`` as that code reports them (Doodle2Search:
no mAP@200). See `PROTOCOLS`; each preset's ``reference`` names the repository and file whose
numbers it reproduces. Explicit ``map_normalize=`` / ``precision_normalize=`` / ``no_relevant=`` /
``average=`` arguments override the preset's.

Instance-level accuracy
-----------------------
``Acc@k`` = share of queries whose one true gallery item (``target_index[i]``) is among the top k,
with the same ranking and tie rule (the target loses ties against lower gallery indices).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from typing import Any, Literal

import torch

__all__ = [
    "AP_KINDS",
    "AVERAGES",
    "MAP_NORMALIZATIONS",
    "PRECISION_NORMALIZATIONS",
    "PROTOCOLS",
    "RetrievalProtocol",
    "accuracy_at_k",
    "get_protocol",
    "instance_metrics",
    "mean_average_precision",
    "precision_at_k",
    "retrieval_metrics",
]

AP_KINDS = ("trec", "voc", "sklearn")
MAP_NORMALIZATIONS = ("retrieved", "min_k_relevant", "total_relevant")
PRECISION_NORMALIZATIONS = ("k", "min_k_relevant", "hits_at_min_k_relevant")
AVERAGES = ("query", "class")
_NO_RELEVANT = ("zero", "exclude")
# Score-matrix entries per query chunk; each entry needs about 60-100 bytes of temporaries.
_CHUNK_ELEMENTS = 1 << 22

MapNormalize = Literal["retrieved", "min_k_relevant", "total_relevant"]
PrecisionNormalize = Literal["k", "min_k_relevant", "hits_at_min_k_relevant"]
NoRelevant = Literal["zero", "exclude"]


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}")


def _check_k(k: Any, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {k!r}")
    return k


# --------------------------------------------------------------------------------------------
# protocols
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RetrievalProtocol:
    """One evaluation protocol: how AP and P@k are computed, averaged, and which cut-offs are reported.

    Attributes:
        name: the preset's name (``"textbook"``, ``"sake"``, ...), with ``+overrides`` when changed.
        average_precision: ``"trec"``, ``"voc"`` or ``"sklearn"`` (module docstring).
        map_normalize: normaliser of AP@k. precision_normalize: definition of P@k.
        no_relevant: ``"zero"`` or ``"exclude"``. average: ``"query"`` or ``"class"``.
        precision_no_relevant: the same for P@k when the code treats it differently (None: as
            ``no_relevant``). SAKE's ``eval_precision`` returns 0 for a query without relevant items
            (it never divides by R) while its ``eval_AP_inner`` returns NaN.
        map_ks / precision_ks: the cut-offs the protocol reports (``map@all`` is always reported).
        reference: the code whose numbers the preset reproduces (repository and file).
    """

    name: str
    average_precision: str = "trec"
    map_normalize: str = "retrieved"
    precision_normalize: str = "k"
    no_relevant: str = "zero"
    average: str = "query"
    precision_no_relevant: str | None = None
    map_ks: tuple[int, ...] = (200,)
    precision_ks: tuple[int, ...] = (100, 200)
    reference: str = ""

    def __post_init__(self):
        _check_choice("average_precision", self.average_precision, AP_KINDS)
        _check_choice("map_normalize", self.map_normalize, MAP_NORMALIZATIONS)
        _check_choice("precision_normalize", self.precision_normalize, PRECISION_NORMALIZATIONS)
        _check_choice("no_relevant", self.no_relevant, _NO_RELEVANT)
        _check_choice("average", self.average, AVERAGES)
        if self.precision_no_relevant is not None:
            _check_choice("precision_no_relevant", self.precision_no_relevant, _NO_RELEVANT)
        for k in (*self.map_ks, *self.precision_ks):
            _check_k(k, "cut-off")

    def with_overrides(self, **overrides: Any) -> RetrievalProtocol:
        """A copy with the non-None ``overrides`` applied; the name records that it was changed."""
        changed = {k: v for k, v in overrides.items() if v is not None and getattr(self, k) != v}
        if "no_relevant" in changed and "precision_no_relevant" not in changed:
            changed["precision_no_relevant"] = None  # an explicit no_relevant applies to both
        if not changed:
            return self
        if "map_ks" in changed:
            changed["map_ks"] = tuple(changed["map_ks"])
        if "precision_ks" in changed:
            changed["precision_ks"] = tuple(changed["precision_ks"])
        label = ", ".join(f"{k}={v}" for k, v in changed.items() if k not in ("map_ks", "precision_ks") and v is not None)
        name = f"{self.name} ({label})" if label else self.name
        return dataclasses.replace(self, name=name, **changed)

    def settings(self) -> dict[str, Any]:
        """JSON-able description (what a result records about how it was computed)."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)}


PROTOCOLS: dict[str, RetrievalProtocol] = {
    # Today's hf-sbir definitions (unchanged defaults): TREC AP over the whole ranking; mAP@200
    # divided by the relevant items retrieved in the top 200 (as SEM-PCYC's, but ties broken by
    # gallery index instead of grouped); P@k = hits@k / k; queries without relevant items count 0.
    "textbook": RetrievalProtocol("textbook", reference="hf-sbir's own definitions: TREC average precision, P@k = hits@k / k"),
    # SAKE (Liu et al., ICCV 2019): eval_AP_inner + VOCap + eval_precision. Its test scripts run
    # with warnings as errors, so R = 0 makes eval_AP_inner return NaN, and np.nanmean skips it.
    # Its scripts print per-class means; the per-query mean is what later tables (ZSE-SBIR, ...)
    # report under "SAKE's protocol"; `average="class"` gives the per-class one (= "dsn").
    "sake": RetrievalProtocol(
        "sake", "voc", "min_k_relevant", "k", "exclude", "query", precision_no_relevant="zero",
        reference="qliu24/SAKE src/test_cse_resnet_tuberlin_zeroshot.py (eval_AP_inner, VOCap, eval_precision)",
    ),
    # ZSE-SBIR (Lin et al., CVPR 2023): voc_eval / voc_ap (= SAKE's AP), np.nanmean over queries;
    # precision_eval takes the top min(k, R) items and divides by min(k, R).
    "zse_sbir": RetrievalProtocol(
        "zse_sbir", "voc", "min_k_relevant", "hits_at_min_k_relevant", "exclude", "query",
        reference="buptLinfy/ZSE-SBIR utils/ap.py (calculate, voc_eval, voc_ap, precision_eval)",
    ),
    # SEM-PCYC (Dutta & Akata, CVPR 2019): apsak = sklearn average_precision_score on each query's
    # whole ranking (k=None) or its top k, 0 for a query with no relevant item in the list;
    # precak/prec = hits@k / min(k, G); np.mean over queries.
    "sem_pcyc": RetrievalProtocol(
        "sem_pcyc", "sklearn", "retrieved", "k", "zero", "query",
        reference="AnjanDutta/sem-pcyc src/utils.py (apsak, aps, precak, prec), src/test.py (np.mean)",
    ),
    # Doodle2Search (Dey et al., CVPR 2019): test.py reports sklearn average_precision_score over
    # the whole ranking (np.mean over queries) and no mAP@200 (its mAP@200 lines are commented
    # out); utils.prec divides hits@k by min(R, k). Their prec raises ZeroDivisionError for R = 0;
    # such a query counts 0 here.
    "doodle2search": RetrievalProtocol(
        "doodle2search", "sklearn", "retrieved", "min_k_relevant", "zero", "query", map_ks=(),
        reference="sounakdey/doodle2search src/test.py (average_precision_score, np.mean), src/utils.py (prec)",
    ),
    # DSN (Wang et al., IJCAI 2021): SAKE's eval_AP_inner / eval_precision, reported as the mean over
    # classes of each class's np.nanmean.
    "dsn": RetrievalProtocol(
        "dsn", "voc", "min_k_relevant", "k", "exclude", "class", precision_no_relevant="zero",
        reference="haowang1992/DSN src/test_cse_resnet_sketchy_zeroshot.py (per-class np.nanmean, then mean)",
    ),
    # TC-Net (Wang et al., ACM MM 2021): the same functions; evaluate_metric(top=k) gives mAP@k with
    # min(k, R) and Prec@k, per-class np.nanmean then np.nanmean over classes.
    "tc_net": RetrievalProtocol(
        "tc_net", "voc", "min_k_relevant", "k", "exclude", "class", precision_no_relevant="zero",
        reference="haowang1992/TCN util/tool.py (evaluate_metric, eval_AP_inner, VOCap, eval_precision)",
    ),
}


def get_protocol(protocol: str | RetrievalProtocol) -> RetrievalProtocol:
    """The `RetrievalProtocol` named ``protocol`` (a preset of `PROTOCOLS`), or ``protocol`` itself."""
    if isinstance(protocol, RetrievalProtocol):
        return protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {protocol!r}; choose one of {list(PROTOCOLS)}")
    return PROTOCOLS[protocol]


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


def _label_values(labels: Any) -> list:
    """The labels as plain Python values. A tensor's (or array's) elements would otherwise be 0-d tensors, which
    hash and compare by identity as dictionary keys, so equal labels would never match."""
    if hasattr(labels, "tolist") and hasattr(labels, "reshape"):  # torch tensors, numpy arrays
        return labels.reshape(-1).tolist()
    return list(labels)


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
    q_list, g_list = _label_values(query_labels), _label_values(gallery_labels)
    seen = dict.fromkeys(q_list + g_list)
    try:
        names = sorted(seen)
    except TypeError:
        names = list(seen)
    to_id = {name: i for i, name in enumerate(names)}
    q = torch.tensor([to_id[x] for x in q_list], dtype=torch.long)
    g = torch.tensor([to_id[x] for x in g_list], dtype=torch.long)
    return q, g, names


def integer_class_ids(labels: Any, metric: str, name: str):
    """``labels`` as an int64 numpy array of class ids, for the `evaluate` modules.

    WHY: their ``references`` are int64 features, so class ids are the only labels that can match them;
    a plain ``int64`` cast would truncate ``1.5`` to class 1 (a wrong score, silently) and fail on class
    names with numpy's message, which names neither the argument nor the fix. Whole-number floats (a
    float tensor of ids) are accepted.
    """
    import numpy as np

    values = np.asarray(labels)
    if values.dtype.kind == "f":
        bad = values[~(np.isfinite(values) & (values == np.round(values)))].tolist()
    else:  # ints and bools pass; class names, or ids mixed with something else (an object array), do not
        bad = [v for v in values.ravel().tolist() if not isinstance(v, int)]
    if bad:
        raise ValueError(f"{metric} needs integer class ids in `{name}=`, like `references` (map class names to ids first); got {bad[0]!r}")
    return values.astype(np.int64)


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


_LIBC_TRIM: Any = None


def release_freed_memory() -> None:
    """Give the memory of freed chunk temporaries back to the OS (glibc ``malloc_trim``; no-op elsewhere).

    WHY: a chunk allocates a dozen (c, G) temporaries of tens of MB each. glibc raises its mmap
    threshold after the first such free, so later ones come from the heap, where fragmentation keeps
    them resident: measured RSS grew by ~0.9 GiB per 100 chunks of 4 x 1M (6.5 GiB extra at 400 x 1M
    queries) while the live tensors stayed constant. Trimming after each chunk keeps it flat.
    """
    global _LIBC_TRIM
    if _LIBC_TRIM is None:
        _LIBC_TRIM = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                _LIBC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):
                pass
    if _LIBC_TRIM:
        _LIBC_TRIM(0)


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


def _reverse_cummax(x: torch.Tensor) -> torch.Tensor:
    """``out[:, i] = max(x[:, i:])`` (the VOC interpolation of a precision curve)."""
    return torch.flip(torch.cummax(torch.flip(x, dims=[1]), dim=1).values, dims=[1])


def _tie_group_ends(sorted_scores: torch.Tensor) -> torch.Tensor:
    """0-based position of the last item of each item's tie group in a row sorted by score."""
    n = sorted_scores.shape[1]
    is_end = torch.ones_like(sorted_scores, dtype=torch.bool)
    is_end[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]
    position = torch.arange(n, device=sorted_scores.device).expand_as(sorted_scores)
    candidates = torch.where(is_end, position, torch.full_like(position, n))
    return torch.flip(torch.cummin(torch.flip(candidates, dims=[1]), dim=1).values, dims=[1])


def stat_keys(ks: Sequence[int], ap_kinds: Sequence[str] = ("trec",), r_ks: Sequence[int] = ()) -> list[str]:
    """The per-query keys `chunk_ranking_stats` returns for these options."""
    keys = ["num_relevant"] + [f"hits@{k}" for k in ks]
    for kind in ap_kinds:
        keys += [f"{kind}:ap_sum"] + [f"{kind}:ap_sum@{k}" for k in ks]
    keys += [f"hits@min({k},R)" for k in r_ks]
    return keys


def _cut_stats(
    rel: torch.Tensor,
    sorted_scores: torch.Tensor | None,
    num_relevant: torch.Tensor,
    cuts: dict[int, int],
    ap_kinds: Sequence[str],
    r_ks: Sequence[int],
    out: dict[str, torch.Tensor],
) -> None:
    """The top-k statistics (``hits@k``, ``<kind>:ap_sum@k``, ``hits@min(k,R)``) from the ranked
    relevance ``rel`` (``(c, n)``, n >= every cut) and, for "sklearn", the scores in that order."""
    if not cuts:
        return
    width = max(cuts.values())
    rel = rel[:, :width]
    hits = rel.cumsum(dim=1)
    precision = hits / torch.arange(1, width + 1, device=rel.device, dtype=torch.float64)
    zero = torch.zeros((), dtype=torch.float64, device=rel.device)
    ends = _tie_group_ends(sorted_scores[:, :width]) if "sklearn" in ap_kinds else None
    for k, kk in cuts.items():
        out[f"hits@{k}"] = hits[:, kk - 1].clone().cpu()  # (a copy: a view would keep the chunk's (c, k) matrix alive)
        for kind in ap_kinds:
            if kind == "trec":
                term = precision[:, :kk]
            elif kind == "voc":  # interpolation within the top k only (the list is cut first)
                term = _reverse_cummax(precision[:, :kk])
            else:  # a tie group straddling the cut ends at the cut
                term = precision.gather(1, ends[:, :kk].clamp(max=kk - 1))
            out[f"{kind}:ap_sum@{k}"] = torch.where(rel[:, :kk], term, zero).sum(dim=1).cpu()
    for k in r_ks:
        at = (num_relevant.to(rel.device).clamp(max=cuts[k]) - 1).clamp(min=0)
        out[f"hits@min({k},R)"] = torch.where(num_relevant.to(rel.device) > 0, hits.gather(1, at[:, None])[:, 0], 0).cpu()


def chunk_ranking_stats(
    scores: torch.Tensor,
    query_ids: torch.Tensor,
    gallery_ids: torch.Tensor,
    ks: Sequence[int],
    exclude_index: torch.Tensor | None = None,
    ap_kinds: Sequence[str] = ("trec",),
    r_ks: Sequence[int] = (),
) -> dict[str, torch.Tensor]:
    """Sufficient statistics for every label metric of one chunk of queries.

    Args:
        scores: ``(c, G)`` similarities for ``c`` queries.
        query_ids: ``(c,)`` int64 labels. gallery_ids: ``(G,)`` int64 labels.
        ks: cut-offs to report (clipped to the effective gallery size).
        exclude_index: ``(c,)`` gallery index to drop from each query's gallery, or None.
        ap_kinds: which AP precision terms to sum (`AP_KINDS`).
        r_ks: cut-offs k for which ``hits@min(k, R)`` is needed (ZSE-SBIR's precision; requires k in ``ks``).

    Returns:
        dict of ``(c,)`` CPU tensors keyed as `stat_keys` says: ``num_relevant`` (R), ``hits@k``,
        ``<kind>:ap_sum`` (sum of the precision terms at the relevant ranks over the whole ranking,
        float64) and ``<kind>:ap_sum@k`` (the same over the top k), ``hits@min(k,R)``; plus
        ``gallery_size`` (a 0-d tensor: G, or G - 1 with an exclusion).
    """
    _check_finite(scores)
    for kind in ap_kinds:
        _check_choice("average_precision", kind, AP_KINDS)
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()  # exact; CPU sorts are slow in half precision
    num_gallery = scores.shape[1]
    order = ranking_order(scores)
    if exclude_index is not None:
        keep = order != exclude_index.to(order.device)[:, None]
        order = order[keep].view(scores.shape[0], num_gallery - 1)
        num_gallery -= 1
    rel = gallery_ids.to(order.device)[order] == query_ids.to(order.device)[:, None]
    sorted_scores = scores.to(order.device).gather(1, order) if "sklearn" in ap_kinds else None
    del order
    hits = rel.cumsum(dim=1)
    ranks = torch.arange(1, num_gallery + 1, device=rel.device, dtype=torch.float64)
    precision = hits / ranks  # P@i, float64
    zero = torch.zeros((), dtype=torch.float64, device=rel.device)
    # A copy: a view of `hits` kept in the result would keep this chunk's (c, G) matrix alive until the
    # end of the evaluation (32 MB per 4 x 1M chunk; 80 GB over 10k queries).
    num_relevant = hits[:, -1].clone()
    out: dict[str, torch.Tensor] = {"num_relevant": num_relevant.cpu(), "gallery_size": torch.tensor(num_gallery)}
    for kind in ap_kinds:
        if kind == "trec":
            term = precision
        elif kind == "voc":
            term = _reverse_cummax(precision)
        else:
            term = precision.gather(1, _tie_group_ends(sorted_scores))
        out[f"{kind}:ap_sum"] = torch.where(rel, term, zero).sum(dim=1).cpu()
        del term
    del hits, precision
    cuts = {k: min(k, num_gallery) for k in ks}
    _cut_stats(rel, sorted_scores, num_relevant, cuts, ap_kinds, r_ks, out)
    return out


def merge_stats(parts: list[dict[str, torch.Tensor]], keys: Sequence[str], gallery_size: int) -> dict[str, torch.Tensor]:
    """Concatenate the per-chunk outputs of `chunk_ranking_stats` (``keys``: see `stat_keys`)."""
    if not parts:
        out = {key: torch.zeros(0, dtype=torch.float64) for key in keys}
    else:
        out = {key: torch.cat([p[key] for p in parts]) for key in keys}
    out["gallery_size"] = torch.tensor(gallery_size)
    return out


def stats_options(protocol: RetrievalProtocol, map_ks: Sequence[int], precision_ks: Sequence[int]) -> dict[str, Any]:
    """`chunk_ranking_stats` keyword arguments (``ks``, ``ap_kinds``, ``r_ks``) that ``protocol`` needs."""
    return {
        "ks": sorted(set(map_ks) | set(precision_ks)),
        "ap_kinds": (protocol.average_precision,),
        "r_ks": tuple(precision_ks) if protocol.precision_normalize == "hits_at_min_k_relevant" else (),
    }


def ranking_stats(
    scores: Any,
    query_ids: torch.Tensor,
    gallery_ids: torch.Tensor,
    ks: Sequence[int],
    exclude_self: bool = False,
    chunk_size: int | None = None,
    ap_kinds: Sequence[str] = ("trec",),
    r_ks: Sequence[int] = (),
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
                ap_kinds=ap_kinds,
                r_ks=r_ks,
            )
        )
        release_freed_memory()
    return merge_stats(parts, stat_keys(ks, ap_kinds, r_ks), num_gallery - (1 if exclude_self else 0))


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
    stats: dict[str, torch.Tensor], k: int | None, normalize: str, no_relevant: str, kind: str = "trec"
) -> torch.Tensor:
    """Per-query AP (float64, ``(Q,)``) from `ranking_stats` output; see the module docstring."""
    r = stats["num_relevant"]
    if k is None:
        ap = _safe_div(stats[f"{kind}:ap_sum"], r)
    else:
        kk = min(k, int(stats["gallery_size"]))
        total = stats[f"{kind}:ap_sum@{k}"]
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
    if normalize == "k":
        p = stats[f"hits@{k}"].to(torch.float64) / kk
    elif normalize == "min_k_relevant":
        p = _safe_div(stats[f"hits@{k}"], r.clamp(max=kk))
    else:
        p = _safe_div(stats[f"hits@min({k},R)"], r.clamp(max=kk))
    return _apply_no_relevant(p, r, no_relevant)


def _reduce(values: torch.Tensor, reduction: str) -> float | torch.Tensor:
    if reduction == "none":
        return values
    if values.numel() == 0 or torch.isnan(values).all():
        return float("nan")
    return float(torch.nanmean(values))


def _average(values: torch.Tensor, query_ids: torch.Tensor, average: str) -> float:
    """Mean over queries (NaN skipped), or over query classes of each class's mean (DSN / TC-Net)."""
    if average == "query":
        return _reduce(values, "mean")
    means = torch.tensor([_reduce(values[query_ids == c], "mean") for c in torch.unique(query_ids).tolist()], dtype=torch.float64)
    return _reduce(means, "mean")


def _resolve(
    protocol: str | RetrievalProtocol,
    *,
    map_normalize: str | None = None,
    precision_normalize: str | None = None,
    no_relevant: str | None = None,
    average: str | None = None,
    map_ks: Sequence[int] | None = None,
    precision_ks: Sequence[int] | None = None,
) -> RetrievalProtocol:
    if map_ks is not None:
        map_ks = [_check_k(k, "map_ks") for k in map_ks]
    if precision_ks is not None:
        precision_ks = [_check_k(k, "precision_ks") for k in precision_ks]
    return get_protocol(protocol).with_overrides(
        map_normalize=map_normalize,
        precision_normalize=precision_normalize,
        no_relevant=no_relevant,
        average=average,
        map_ks=map_ks,
        precision_ks=precision_ks,
    )


# --------------------------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------------------------
def mean_average_precision(
    scores: Any,
    query_labels: Any,
    gallery_labels: Any,
    k: int | None = None,
    *,
    protocol: str | RetrievalProtocol = "textbook",
    normalize: MapNormalize | None = None,
    no_relevant: NoRelevant | None = None,
    average: str | None = None,
    exclude_self: bool = False,
    reduction: Literal["mean", "none"] = "mean",
    chunk_size: int | None = None,
) -> float | torch.Tensor:
    """Mean average precision (mAP@all, or mAP@k) of a category-level retrieval.

    Args:
        scores: ``(Q, G)`` similarities, higher = better.
        query_labels: ``(Q,)`` class of each query. gallery_labels: ``(G,)`` class of each item.
        k: cut-off; ``None`` (default) = the whole ranking. Clipped to the gallery size.
        protocol: a preset of `PROTOCOLS` (default ``"textbook"``: TREC AP, mAP@k divided by the
            relevant items retrieved) or a `RetrievalProtocol`; sets every option below.
        normalize: override the protocol's AP@k normaliser (``"retrieved"``, ``"min_k_relevant"``,
            ``"total_relevant"``; ignored when ``k is None``).
        no_relevant: override: ``"zero"`` (a query whose class is absent from the gallery scores 0
            and counts in the mean) or ``"exclude"`` (left out of the mean; NaN per query).
        average: override: ``"query"`` or ``"class"`` (mean of per-class means).
        exclude_self: queries and gallery are the same set; drop query i from its own gallery.
        reduction: ``"mean"`` (a float) or ``"none"`` (a float64 ``(Q,)`` tensor of per-query AP).
        chunk_size: queries ranked at a time (default: about 4M score entries per chunk).

    Ties are broken by gallery index (ascending) -- see the module docstring.
    """
    if normalize is not None:
        _check_choice("normalize", normalize, MAP_NORMALIZATIONS)
    proto = _resolve(protocol, map_normalize=normalize, no_relevant=no_relevant, average=average)
    _check_choice("reduction", reduction, ("mean", "none"))
    ks = [] if k is None else [_check_k(k)]
    q, g, _ = encode_labels(query_labels, gallery_labels)
    kind = proto.average_precision
    stats = ranking_stats(scores, q, g, ks, exclude_self=exclude_self, chunk_size=chunk_size, ap_kinds=(kind,))
    values = average_precision_from_stats(stats, k, proto.map_normalize, proto.no_relevant, kind)
    return values if reduction == "none" else _average(values, q, proto.average)


def precision_at_k(
    scores: Any,
    query_labels: Any,
    gallery_labels: Any,
    k: int,
    *,
    protocol: str | RetrievalProtocol = "textbook",
    normalize: PrecisionNormalize | None = None,
    no_relevant: NoRelevant | None = None,
    average: str | None = None,
    exclude_self: bool = False,
    reduction: Literal["mean", "none"] = "mean",
    chunk_size: int | None = None,
) -> float | torch.Tensor:
    """Mean precision at k of a category-level retrieval.

    ``P@k = (relevant items in the top k) / k`` under the default ``"textbook"`` protocol; the
    protocol (or ``normalize=``) picks ``hits@k / min(k, R)`` (``"min_k_relevant"``,
    Doodle2Search) or ``hits@min(k, R) / min(k, R)`` (``"hits_at_min_k_relevant"``, ZSE-SBIR).
    When the gallery has fewer than k items, k is clipped to the gallery size ``G``. Other
    arguments as in `mean_average_precision`; ties are broken by gallery index (ascending).
    """
    if normalize is not None:
        _check_choice("normalize", normalize, PRECISION_NORMALIZATIONS)
    proto = _resolve(protocol, precision_normalize=normalize, no_relevant=no_relevant, average=average)
    _check_choice("reduction", reduction, ("mean", "none"))
    k = _check_k(k)
    q, g, _ = encode_labels(query_labels, gallery_labels)
    r_ks = (k,) if proto.precision_normalize == "hits_at_min_k_relevant" else ()
    stats = ranking_stats(scores, q, g, [k], exclude_self=exclude_self, chunk_size=chunk_size, ap_kinds=(), r_ks=r_ks)
    values = precision_from_stats(stats, k, proto.precision_normalize, proto.precision_no_relevant or proto.no_relevant)
    return values if reduction == "none" else _average(values, q, proto.average)


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
    release_freed_memory()
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


def summarize_stats(
    stats: dict[str, torch.Tensor],
    query_ids: torch.Tensor,
    gallery_ids: torch.Tensor,
    names: list | None,
    protocol: RetrievalProtocol,
    per_class: bool = True,
) -> dict[str, Any]:
    """The `retrieval_metrics` dict from `ranking_stats` output (shared with `hf_sbir.retrieval`)."""
    kind = protocol.average_precision
    per_query = {"map@all": average_precision_from_stats(stats, None, protocol.map_normalize, protocol.no_relevant, kind)}
    for k in protocol.map_ks:
        per_query[f"map@{k}"] = average_precision_from_stats(stats, k, protocol.map_normalize, protocol.no_relevant, kind)
    for k in protocol.precision_ks:
        per_query[f"p@{k}"] = precision_from_stats(stats, k, protocol.precision_normalize, protocol.precision_no_relevant or protocol.no_relevant)
    result: dict[str, Any] = {name: _average(values, query_ids, protocol.average) for name, values in per_query.items()}
    result["protocol"] = protocol.name
    result["num_queries"] = int(query_ids.numel())
    result["num_gallery"] = int(stats["gallery_size"])
    if "exclude" in (protocol.no_relevant, protocol.precision_no_relevant):
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
    map_ks: Sequence[int] | None = None,
    precision_ks: Sequence[int] | None = None,
    *,
    protocol: str | RetrievalProtocol = "textbook",
    map_normalize: MapNormalize | None = None,
    precision_normalize: PrecisionNormalize | None = None,
    no_relevant: NoRelevant | None = None,
    average: Literal["query", "class"] | None = None,
    exclude_self: bool = False,
    per_class: bool = True,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """Every category-level metric of one evaluation protocol, from one ranking pass.

    Args:
        scores: ``(Q, G)`` similarities (higher = better). query_labels / gallery_labels: classes.
        map_ks / precision_ks: cut-offs (default: the protocol's -- mAP@200, P@100, P@200 for all
            presets but ``"doodle2search"``, which has no mAP@200).
        protocol: ``"textbook"`` (default), ``"sake"``, ``"zse_sbir"``, ``"sem_pcyc"``,
            ``"doodle2search"``, ``"dsn"``, ``"tc_net"`` (see `PROTOCOLS`: each reproduces the numbers
            of the evaluation code it names) or a `RetrievalProtocol`.
        map_normalize / precision_normalize / no_relevant: override the protocol's choice.
        average: ``"query"`` (per-query mean) or ``"class"`` (mean of the per-class means reported
            by DSN and TC-Net); default: the protocol's.
        exclude_self: queries and gallery are the same set (drop each query from its gallery).
        per_class: also return one row per query class.
        chunk_size: queries ranked at a time.

    Returns:
        ``{"map@all", "map@{k}" ..., "p@{k}" ..., "protocol", "num_queries", "num_gallery"}`` (floats
        in [0, 1]; ``"num_excluded_queries"`` when the protocol excludes queries without relevant
        items) and, with ``per_class=True``, ``"per_class"``: one dict per query class (sorted) with
        ``label``, ``num_queries``, ``num_gallery_relevant`` and the metrics over that class's queries.
    """
    proto = _resolve(
        protocol, map_normalize=map_normalize, precision_normalize=precision_normalize, no_relevant=no_relevant,
        average=average, map_ks=map_ks, precision_ks=precision_ks,
    )
    q, g, names = encode_labels(query_labels, gallery_labels)
    options = stats_options(proto, proto.map_ks, proto.precision_ks)
    stats = ranking_stats(scores, q, g, exclude_self=exclude_self, chunk_size=chunk_size, **options)
    return summarize_stats(stats, q, g, names, proto, per_class)


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
