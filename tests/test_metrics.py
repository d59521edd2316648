"""Retrieval metrics against worked examples computed by hand (arithmetic in the comments)."""

import importlib
import math
import socket

import numpy as np
import pytest
import torch

from hf_sbir.metrics import (
    METRIC_NAMES,
    accuracy_at_k,
    evaluate_module_path,
    instance_metrics,
    load_metric,
    mean_average_precision,
    precision_at_k,
    retrieval_metrics,
)
from hf_sbir.metrics.retrieval_metrics import target_ranks

# One query of class 1 against a gallery of 6. Scores strictly decrease with the gallery index,
# so the ranking is the gallery order and the ranked relevance is the label pattern below.
SCORES = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])
GALLERY = torch.tensor([1, 0, 1, 0, 0, 1])  # rel = [1, 0, 1, 0, 0, 1], R = 3
QUERY = torch.tensor([1])
# P@i at the relevant ranks: P@1 = 1/1, P@3 = 2/3, P@6 = 3/6.


def test_map_all_textbook():
    # AP = (1/R) * sum P@i rel_i = (1/1 + 2/3 + 3/6) / 3 = 2.1667 / 3 = 0.72222
    assert mean_average_precision(SCORES, QUERY, GALLERY) == pytest.approx((1 + 2 / 3 + 3 / 6) / 3)
    assert mean_average_precision(SCORES, QUERY, GALLERY) == pytest.approx(0.7222222)


def test_map_at_k_every_normaliser():
    # top 3: rel = [1, 0, 1]; sum P@i rel_i = 1/1 + 2/3 = 1.6667; hits@3 = 2, R = 3
    # retrieved:      1.6667 / hits@3       = 1.6667 / 2 = 0.83333
    # min_k_relevant: 1.6667 / min(3, R=3)  = 1.6667 / 3 = 0.55556
    # total_relevant: 1.6667 / R            = 1.6667 / 3 = 0.55556
    assert mean_average_precision(SCORES, QUERY, GALLERY, k=3) == pytest.approx((1 + 2 / 3) / 2)
    assert mean_average_precision(SCORES, QUERY, GALLERY, k=3, normalize="min_k_relevant") == pytest.approx(
        (1 + 2 / 3) / 3
    )
    assert mean_average_precision(SCORES, QUERY, GALLERY, k=3, normalize="total_relevant") == pytest.approx(
        (1 + 2 / 3) / 3
    )
    # top 2: rel = [1, 0]; sum = 1/1 = 1; hits@2 = 1, min(2, R) = 2, R = 3
    # retrieved: 1/1 = 1.0; min_k_relevant: 1/2 = 0.5; total_relevant: 1/3 = 0.33333
    assert mean_average_precision(SCORES, QUERY, GALLERY, k=2) == pytest.approx(1.0)
    assert mean_average_precision(SCORES, QUERY, GALLERY, k=2, normalize="min_k_relevant") == pytest.approx(0.5)
    assert mean_average_precision(SCORES, QUERY, GALLERY, k=2, normalize="total_relevant") == pytest.approx(1 / 3)


def test_map_at_k_no_relevant_in_top_k_is_zero():
    # Gallery ranked [0, 1, 1]: top 1 has no relevant item -> AP@1 = 0 for every normaliser.
    scores = torch.tensor([[3.0, 2.0, 1.0]])
    for normalize in ("retrieved", "min_k_relevant", "total_relevant"):
        assert mean_average_precision(scores, [1], [0, 1, 1], k=1, normalize=normalize) == 0.0


def test_precision_at_k_and_variant():
    # P@3 = hits@3 / 3 = 2/3; P@2 = 1/2; P@6 = 3/6
    assert precision_at_k(SCORES, QUERY, GALLERY, 3) == pytest.approx(2 / 3)
    assert precision_at_k(SCORES, QUERY, GALLERY, 2) == pytest.approx(1 / 2)
    assert precision_at_k(SCORES, QUERY, GALLERY, 6) == pytest.approx(3 / 6)
    # min_k_relevant at k=6: hits@6 / min(6, R=3) = 3/3 = 1; at k=2: 1 / min(2, 3) = 0.5
    assert precision_at_k(SCORES, QUERY, GALLERY, 6, normalize="min_k_relevant") == pytest.approx(1.0)
    assert precision_at_k(SCORES, QUERY, GALLERY, 2, normalize="min_k_relevant") == pytest.approx(0.5)


def test_gallery_smaller_than_k_clips_k():
    # k = 100 > G = 6 -> k is clipped to 6.
    # P@100 = hits@6 / 6 = 3/6 = 0.5 (not 3/100)
    assert precision_at_k(SCORES, QUERY, GALLERY, 100) == pytest.approx(0.5)
    # mAP@100 = AP over all 6 with N = hits@6 = 3 -> equals AP@all = 0.72222
    assert mean_average_precision(SCORES, QUERY, GALLERY, k=100) == pytest.approx(0.7222222)
    # min_k_relevant: N = min(6, 3) = 3 -> 0.72222 as well
    assert mean_average_precision(SCORES, QUERY, GALLERY, k=100, normalize="min_k_relevant") == pytest.approx(
        0.7222222
    )
    # Acc@100 with G = 6 -> every target is inside the (clipped) top 6
    assert accuracy_at_k(SCORES, [5], 100) == 1.0


def test_ties_break_by_gallery_index():
    # All scores equal -> ranking = gallery order [0..5] -> identical to the worked example.
    tied = torch.zeros(1, 6)
    assert mean_average_precision(tied, QUERY, GALLERY) == pytest.approx(0.7222222)
    # Partial tie: scores [1, 2, 2, 2, 0, 0], labels [1, 1, 0, 1, 0, 0] for a class-1 query.
    # Stable sort, descending: the tie {1, 2, 3} at 2.0 keeps index order, then 0 (1.0), then the
    # tie {4, 5} at 0.0 -> ranking [1, 2, 3, 0, 4, 5]
    # rel = [1, 0, 1, 1, 0, 0]; P@1 = 1, P@3 = 2/3, P@4 = 3/4
    # AP = (1 + 2/3 + 3/4) / 3 = 2.41667 / 3 = 0.80556
    scores = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0, 0.0]])
    labels = [1, 1, 0, 1, 0, 0]
    assert mean_average_precision(scores, [1], labels) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    # P@2 over ranking [1, 2]: one relevant -> 1/2
    assert precision_at_k(scores, [1], labels, 2) == pytest.approx(0.5)
    # Acc@1 with target 3 (score 2.0): items 1 and 2 tie with it at lower indices -> rank 2 (0-based)
    assert accuracy_at_k(scores, [3], 2) == 0.0 and accuracy_at_k(scores, [3], 3) == 1.0
    # target 1 wins the tie (lowest index among equals) -> Acc@1 = 1
    assert accuracy_at_k(scores, [1], 1) == 1.0


def test_ties_independent_of_chunking():
    torch.manual_seed(0)
    scores = torch.randint(0, 3, (37, 50)).float()  # many ties
    q = torch.randint(0, 4, (37,))
    g = torch.randint(0, 4, (50,))
    whole = retrieval_metrics(scores, q, g, map_ks=(10,), precision_ks=(5,), chunk_size=1000)
    chunked = retrieval_metrics(scores, q, g, map_ks=(10,), precision_ks=(5,), chunk_size=4)
    assert whole == chunked


def test_fast_cpu_ranking_equals_stable_torch_sort():
    # The CPU path sorts int64 keys built from the float bits; it must equal torch's stable sort
    # (score descending, index ascending), including -0.0 == 0.0, infinities and subnormals.
    rm = importlib.import_module("hf_sbir.metrics.retrieval_metrics")
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(-3, 4, (6, 300), generator=gen).float() * 0.5
    scores[0, :5] = -0.0
    scores[1, :3] = float("-inf")
    scores[2, :2] = float("inf")
    scores[3, :4] = 1e-40
    scores[4, :4] = -1e-40
    scores[5] = torch.randn(300, generator=gen)
    expected = torch.sort(scores, dim=1, descending=True, stable=True).indices
    assert torch.equal(rm.ranking_order(scores), expected)
    # float64 scores are ranked in float64 (no rounding to float32 that could create ties)
    close = torch.tensor([[1.0, 1.0 + 1e-12]], dtype=torch.float64)
    assert rm.ranking_order(close).tolist() == [[1, 0]]
    assert mean_average_precision(close, [1], [0, 1]) == 1.0


def test_no_relevant_queries_zero_or_excluded():
    # Two queries: class 1 (the worked example, AP 0.72222) and class 7, absent from the gallery.
    scores = SCORES.repeat(2, 1)
    q = [1, 7]
    # zero (default): mean over both queries = (0.72222 + 0) / 2 = 0.36111
    assert mean_average_precision(scores, q, GALLERY) == pytest.approx(0.7222222 / 2)
    # exclude: mean over the one query with relevant items = 0.72222
    assert mean_average_precision(scores, q, GALLERY, no_relevant="exclude") == pytest.approx(0.7222222)
    per_query = mean_average_precision(scores, q, GALLERY, no_relevant="exclude", reduction="none")
    assert per_query[0] == pytest.approx(0.7222222) and math.isnan(per_query[1])
    # P@3: zero -> (2/3 + 0) / 2 = 1/3; exclude -> 2/3
    assert precision_at_k(scores, q, GALLERY, 3) == pytest.approx(1 / 3)
    assert precision_at_k(scores, q, GALLERY, 3, no_relevant="exclude") == pytest.approx(2 / 3)
    # all queries excluded -> nan
    assert math.isnan(mean_average_precision(SCORES, [7], GALLERY, no_relevant="exclude"))
    out = retrieval_metrics(scores, q, GALLERY, no_relevant="exclude")
    assert out["num_excluded_queries"] == 1
    assert out["map@all"] == pytest.approx(0.7222222)


def test_accuracy_at_k_hand_example():
    # 3 queries x 4 gallery items; target of each query and its 0-based rank:
    # q0 scores [0.9, 0.1, 0.2, 0.3], target 0 -> rank 0
    # q1 scores [0.5, 0.4, 0.9, 0.1], target 1 -> beaten by 0.9 and 0.5 -> rank 2
    # q2 scores [0.2, 0.8, 0.6, 0.7], target 0 -> beaten by 3 items -> rank 3
    scores = torch.tensor([[0.9, 0.1, 0.2, 0.3], [0.5, 0.4, 0.9, 0.1], [0.2, 0.8, 0.6, 0.7]])
    target = [0, 1, 0]
    # Acc@1 = 1/3 (q0); Acc@3 = 2/3 (q0, q1); Acc@4 = 3/3
    assert accuracy_at_k(scores, target, 1) == pytest.approx(1 / 3)
    assert accuracy_at_k(scores, target, 3) == pytest.approx(2 / 3)
    assert accuracy_at_k(scores, target, 4) == 1.0
    assert accuracy_at_k(scores, target, 1, reduction="none").tolist() == [1.0, 0.0, 0.0]
    assert instance_metrics(scores, target) == {
        "acc@1": pytest.approx(1 / 3),
        "acc@5": 1.0,  # k = 5 clipped to G = 4
        "acc@10": 1.0,
    }


def test_exclude_self_removes_the_query_from_its_gallery():
    # 3 items, classes [0, 0, 1]; similarity = self 1.0, others as below.
    scores = torch.tensor([[1.0, 0.2, 0.5], [0.2, 1.0, 0.1], [0.5, 0.1, 1.0]])
    labels = [0, 0, 1]
    # query 0, gallery {1, 2}: ranked [2 (0.5), 1 (0.2)], rel = [0, 1] -> AP = (1/2) / 1 = 0.5
    # query 1, gallery {0, 2}: ranked [0 (0.2), 2 (0.1)], rel = [1, 0] -> AP = 1
    # query 2, gallery {0, 1}: no item of class 1 -> R = 0 -> AP 0 (no_relevant="zero")
    # mAP = (0.5 + 1 + 0) / 3 = 0.5
    assert mean_average_precision(scores, labels, labels, exclude_self=True) == pytest.approx(0.5)
    assert mean_average_precision(scores, labels, labels, exclude_self=True, no_relevant="exclude") == pytest.approx(
        0.75
    )
    # P@1: q0 -> 0, q1 -> 1, q2 -> 0 -> 1/3; k = 5 clips to G - 1 = 2: hits@2 / 2 = (1/2 + 1/2 + 0) / 3
    assert precision_at_k(scores, labels, labels, 1, exclude_self=True) == pytest.approx(1 / 3)
    assert precision_at_k(scores, labels, labels, 5, exclude_self=True) == pytest.approx(1 / 3)
    # Masking the diagonal with -inf is *not* the same: the self item stays relevant, ranked last.
    masked = scores.clone().fill_diagonal_(float("-inf"))
    # q0: ranked [2, 1, 0], rel [0, 1, 1] -> (1/2 + 2/3) / 2 = 0.58333 (not 0.5)
    assert mean_average_precision(masked[:1], [0], labels) == pytest.approx((1 / 2 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="same set"):
        mean_average_precision(scores[:2], labels[:2], labels, exclude_self=True)


def test_retrieval_metrics_dict_and_per_class():
    # Two classes, string labels; 4 queries x 6 gallery items.
    scores = torch.tensor(
        [
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],  # "cat": gallery ranked 0..5
            [0.4, 0.5, 0.6, 0.7, 0.8, 0.9],  # "cat": gallery ranked 5..0
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],  # "dog"
            [0.4, 0.5, 0.6, 0.7, 0.8, 0.9],  # "dog"
        ]
    )
    queries = ["cat", "cat", "dog", "dog"]
    gallery = ["cat", "dog", "cat", "dog", "dog", "cat"]
    # cat rel (forward) [1,0,1,0,0,1] -> AP = 0.72222 (worked example)
    # cat rel (reverse) [1,0,0,1,0,1] -> AP = (1 + 2/4 + 3/6) / 3 = 0.66667
    # dog rel (forward) [0,1,0,1,1,0] -> AP = (1/2 + 2/4 + 3/5) / 3 = 0.53333
    # dog rel (reverse) [0,1,1,0,1,0] -> AP = (1/2 + 2/3 + 3/5) / 3 = 0.58889
    out = retrieval_metrics(scores, queries, gallery, map_ks=(200,), precision_ks=(100, 200))
    expected = {"cat": (0.7222222 + 2 / 3) / 2, "dog": (0.5333333 + 0.5888889) / 2}
    assert out["map@all"] == pytest.approx(sum(expected.values()) / 2)
    assert out["map@200"] == pytest.approx(out["map@all"])  # k clipped to G = 6
    assert out["p@100"] == pytest.approx(0.5) and out["p@200"] == pytest.approx(0.5)  # 3 of 6 for everyone
    assert {row["label"]: row["map@all"] for row in out["per_class"]} == pytest.approx(expected)
    cat = next(row for row in out["per_class"] if row["label"] == "cat")
    assert cat["num_queries"] == 2 and cat["num_gallery_relevant"] == 3 and cat["p@100"] == pytest.approx(0.5)
    assert out["num_queries"] == 4 and out["num_gallery"] == 6


def test_chunked_equals_reference_on_random_data():
    # Reference: a direct per-query Python implementation of the same definitions.
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(23, 40, generator=gen)
    q = torch.randint(0, 5, (23,), generator=gen)
    g = torch.randint(0, 5, (40,), generator=gen)
    ref_all, ref_k, ref_p = [], [], []
    for i in range(23):
        order = sorted(range(40), key=lambda j: (-scores[i, j].item(), j))
        rel = [int(g[j] == q[i]) for j in order]
        hits, ap_terms = 0, []
        for rank, r in enumerate(rel, start=1):
            hits += r
            ap_terms.append(hits / rank if r else 0.0)
        total = sum(rel)
        ref_all.append(sum(ap_terms) / total if total else 0.0)
        hk = sum(rel[:10])
        ref_k.append(sum(ap_terms[:10]) / hk if hk else 0.0)
        ref_p.append(sum(rel[:7]) / 7)
    for chunk in (None, 1, 5):
        assert mean_average_precision(scores, q, g, chunk_size=chunk) == pytest.approx(np.mean(ref_all))
        assert mean_average_precision(scores, q, g, k=10, chunk_size=chunk) == pytest.approx(np.mean(ref_k))
        assert precision_at_k(scores, q, g, 7, chunk_size=chunk) == pytest.approx(np.mean(ref_p))


def test_input_validation():
    with pytest.raises(ValueError, match="normalize"):
        mean_average_precision(SCORES, QUERY, GALLERY, k=3, normalize="bogus")
    with pytest.raises(ValueError, match="2-D"):
        mean_average_precision(torch.zeros(6), QUERY, GALLERY)
    with pytest.raises(ValueError, match="gallery labels"):
        mean_average_precision(SCORES, QUERY, GALLERY[:5])
    with pytest.raises(ValueError, match="NaN"):
        mean_average_precision(torch.tensor([[float("nan"), 1.0]]), [0], [0, 1])
    with pytest.raises(ValueError, match="target_index"):
        accuracy_at_k(SCORES, [6], 1)
    with pytest.raises(ValueError, match="positive"):
        precision_at_k(SCORES, QUERY, GALLERY, 0)


def test_large_gallery_is_processed_in_chunks(monkeypatch):
    # The default chunk keeps queries x gallery near 4M entries: 300 x 20k = 6M -> 2+ chunks.
    # (importlib: the attribute `hf_sbir.metrics.retrieval_metrics` is the function of that name)
    rm = importlib.import_module("hf_sbir.metrics.retrieval_metrics")

    calls = []
    original = rm.chunk_ranking_stats
    monkeypatch.setattr(rm, "chunk_ranking_stats", lambda s, *a, **kw: calls.append(s.shape) or original(s, *a, **kw))
    scores = torch.rand(300, 20_000)
    rm.retrieval_metrics(scores, torch.zeros(300, dtype=torch.long), torch.randint(0, 3, (20_000,)), per_class=False)
    assert len(calls) >= 2 and all(rows * cols <= rm._CHUNK_ELEMENTS for rows, cols in calls)


# ------------------------------------------------------------------------------ evaluate modules
@pytest.fixture
def offline(monkeypatch):
    import evaluate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)


def test_evaluate_modules_load_offline_and_match(offline):
    import evaluate

    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(8, 12, generator=gen)
    q = torch.randint(0, 3, (8,), generator=gen)
    g = torch.randint(0, 3, (12,), generator=gen)
    target = torch.randint(0, 12, (8,), generator=gen)
    preds = scores.tolist()

    sbir_map = evaluate.load(evaluate_module_path("sbir_map"), keep_in_memory=True)
    assert isinstance(sbir_map, evaluate.Metric)
    assert sbir_map.compute(predictions=preds, references=q.tolist(), gallery_labels=g.tolist())[
        "map@all"
    ] == pytest.approx(mean_average_precision(scores, q, g))
    out = load_metric("sbir_map", keep_in_memory=True).compute(
        predictions=preds, references=q.tolist(), gallery_labels=g.tolist(), k=5, normalize="min_k_relevant"
    )
    assert out == {"map@5": pytest.approx(mean_average_precision(scores, q, g, k=5, normalize="min_k_relevant"))}

    precision = load_metric("sbir_precision", keep_in_memory=True)
    for start in range(0, 8, 3):  # batched accumulation, as in an eval loop
        precision.add_batch(predictions=preds[start : start + 3], references=q[start : start + 3].tolist())
    assert precision.compute(gallery_labels=g.tolist(), k=4) == {"p@4": pytest.approx(precision_at_k(scores, q, g, 4))}

    accuracy = load_metric("sbir_accuracy_at_k", keep_in_memory=True)
    assert accuracy.compute(predictions=preds, references=target.tolist(), k=[1, 3]) == pytest.approx(
        instance_metrics(scores, target, ks=(1, 3))
    )


def test_load_metric_names():
    assert METRIC_NAMES == ("sbir_map", "sbir_precision", "sbir_accuracy_at_k")
    with pytest.raises(ValueError, match="unknown SBIR metric"):
        load_metric("accuracy")


# ------------------------------------------------------------------------------ instance level (Acc@k)
def test_accuracy_target_loses_ties_to_lower_gallery_indices_and_ignores_its_excluded_self():
    # Query 0's target (item 2) ties with items 1 and 3 at 0.5: it is beaten by the higher 0.9 (item 0) and
    # by the equal score at the lower index 1, not by item 3 -> rank 2.
    scores = torch.tensor([[0.9, 0.5, 0.5, 0.5], [0.1, 0.2, 0.3, 0.4], [0.3, 0.9, 0.8, 0.1], [0.2, 0.6, 0.7, 0.5]])
    target = [2, 3, 0, 1]
    assert accuracy_at_k(scores, target, 2, reduction="none").tolist() == [0.0, 1.0, 0.0, 1.0]
    # The 0-based ranks themselves (q2's target 0.3 is beaten by 0.9 and 0.8; q3's 0.6 by 0.7).
    assert target_ranks(scores, target).tolist() == [2, 0, 2, 1]
    # exclude_self: query i's own item i never counts against its target (queries = gallery, e.g. photos).
    # q0: item 0 (0.9) dropped -> only item 1 beats item 2 -> rank 1; q2: item 2 (0.8) dropped -> rank 1
    # (item 1 still beats it); q3: item 3 dropped, target 1 beaten by item 2 -> rank 1.
    excluded = accuracy_at_k(scores, target, 2, exclude_self=True, reduction="none")
    assert excluded.tolist() == [1.0, 1.0, 1.0, 1.0]
    assert accuracy_at_k(scores, target, 1, exclude_self=True) == pytest.approx(1 / 4)  # q1 only (rank 0)
    assert instance_metrics(scores, target, ks=(1, 2), exclude_self=True) == {"acc@1": 0.25, "acc@2": 1.0}
    assert instance_metrics(scores, target, ks=(1, 2)) == {"acc@1": 0.25, "acc@2": 0.5}  # exclude_self is off by default
    # The same numbers one query at a time.
    for chunk in (1, 3):
        assert instance_metrics(scores, target, ks=(1, 2), exclude_self=True, chunk_size=chunk) == {"acc@1": 0.25, "acc@2": 1.0}
        assert accuracy_at_k(scores, target, 2, exclude_self=True, chunk_size=chunk) == 1.0


def test_instance_metric_errors_name_the_argument():
    scores = torch.rand(3, 3)
    with pytest.raises(ValueError, match="its own excluded"):
        accuracy_at_k(scores, [0, 2, 1], 1, exclude_self=True)  # query 0's target is itself
    with pytest.raises(ValueError, match=r"^got 2 target indices for 3 score rows$"):
        instance_metrics(scores, [0, 1])
    with pytest.raises(ValueError, match=r"^`reduction` must be one of \['mean', 'none'\], got 'sum'$"):
        accuracy_at_k(scores, [0, 1, 2], 1, reduction="sum")
    with pytest.raises(ValueError, match=r"^`ks` must be a positive integer, got 0$"):
        instance_metrics(scores, [0, 1, 2], ks=(1, 0))
    with pytest.raises(ValueError, match=r"^`chunk_size` must be a positive integer, got 0$"):
        instance_metrics(scores, [0, 1, 2], chunk_size=0)
    with pytest.raises(ValueError, match=r"^`chunk_size` must be a positive integer, got 0$"):
        accuracy_at_k(scores, [0, 1, 2], 1, chunk_size=0)


def test_every_option_error_is_one_line_naming_the_argument():
    from hf_sbir.metrics import RetrievalProtocol

    def fails(message, fn, *args, **kwargs):
        with pytest.raises(ValueError) as err:
            fn(*args, **kwargs)
        assert str(err.value) == message

    m = mean_average_precision
    fails("`normalize` must be one of ['retrieved', 'min_k_relevant', 'total_relevant'], got 'k'", m, SCORES, QUERY, GALLERY, 3, normalize="k")
    fails("`reduction` must be one of ['mean', 'none'], got 'sum'", m, SCORES, QUERY, GALLERY, reduction="sum")
    fails("`average` must be one of ['query', 'class'], got 'item'", m, SCORES, QUERY, GALLERY, average="item")
    fails("`no_relevant` must be one of ['zero', 'exclude'], got 'skip'", m, SCORES, QUERY, GALLERY, no_relevant="skip")
    fails("`chunk_size` must be a positive integer, got 0", m, SCORES, QUERY, GALLERY, chunk_size=0)
    fails("`k` must be a positive integer, got True", m, SCORES, QUERY, GALLERY, True)  # a bool is not a cut-off
    fails("`k` must be a positive integer, got 2.0", m, SCORES, QUERY, GALLERY, 2.0)
    p = precision_at_k
    fails("`normalize` must be one of ['k', 'min_k_relevant', 'hits_at_min_k_relevant'], got 'retrieved'", p, SCORES, QUERY, GALLERY, 2, normalize="retrieved")
    fails("`reduction` must be one of ['mean', 'none'], got 'sum'", p, SCORES, QUERY, GALLERY, 2, reduction="sum")
    fails("`chunk_size` must be a positive integer, got 0", p, SCORES, QUERY, GALLERY, 2, chunk_size=0)
    fails("`k` must be a positive integer, got -1", p, SCORES, QUERY, GALLERY, -1)
    # A protocol of one's own is checked field by field.
    fails("`average_precision` must be one of ['trec', 'voc', 'sklearn'], got 'x'", RetrievalProtocol, "mine", average_precision="x")
    fails("`map_normalize` must be one of ['retrieved', 'min_k_relevant', 'total_relevant'], got 'x'", RetrievalProtocol, "mine", map_normalize="x")
    fails("`precision_normalize` must be one of ['k', 'min_k_relevant', 'hits_at_min_k_relevant'], got 'x'", RetrievalProtocol, "mine", precision_normalize="x")
    fails("`no_relevant` must be one of ['zero', 'exclude'], got 'x'", RetrievalProtocol, "mine", no_relevant="x")
    fails("`average` must be one of ['query', 'class'], got 'x'", RetrievalProtocol, "mine", average="x")
    fails("`precision_no_relevant` must be one of ['zero', 'exclude'], got 'x'", RetrievalProtocol, "mine", precision_no_relevant="x")
    fails("`cut-off` must be a positive integer, got 0", RetrievalProtocol, "mine", map_ks=(200, 0))
    fails("`cut-off` must be a positive integer, got 0", RetrievalProtocol, "mine", precision_ks=(0,))


def test_average_and_reduction_options_of_the_single_metrics():
    # Class 0: one query with AP 1 and P@1 1; class 1: two queries with AP 0.5 and P@1 0 (the relevant item is second).
    scores = torch.tensor([[0.9, 0.1, 0.2], [0.1, 0.9, 0.5], [0.2, 0.8, 0.7]])
    q, g = [0, 1, 1], [0, 2, 1]  # (class 2: an item no query looks for)
    # query means: AP (1 + 0.5 + 0.5) / 3, P@1 1/3; class means: AP (1 + 0.5) / 2, P@1 (1 + 0) / 2
    assert mean_average_precision(scores, q, g) == pytest.approx(2 / 3)
    assert mean_average_precision(scores, q, g, average="class") == pytest.approx(0.75)
    assert precision_at_k(scores, q, g, 1) == pytest.approx(1 / 3)
    assert precision_at_k(scores, q, g, 1, average="class") == pytest.approx(0.5)
    assert mean_average_precision(scores, q, g, reduction="none").tolist() == pytest.approx([1.0, 0.5, 0.5])
    assert precision_at_k(scores, q, g, 1, reduction="none").tolist() == [1.0, 0.0, 0.0]
    # The per-class protocols ("dsn") average over classes by default; average="query" overrides them.
    assert mean_average_precision(scores, q, g, protocol="dsn", average="query") == pytest.approx(2 / 3)
    assert mean_average_precision(scores, q, g, protocol="dsn") == pytest.approx(0.75)


def test_evaluate_scripts_defaults_options_and_errors():
    # The module scripts imported as Python modules (what evaluate.load does after copying them to its cache).
    # Gallery [1, 0, 1, 0, 0, 1] for one query of class 1 (SCORES): AP = (1 + 2/3 + 3/6) / 3.
    scripts = {n: importlib.import_module(f"hf_sbir.metrics.evaluate_modules.{n}.{n}") for n in METRIC_NAMES}
    sbir_map = scripts["sbir_map"].SbirMap(keep_in_memory=True)
    preds, refs, gallery = SCORES.tolist(), [1], GALLERY.tolist()
    assert sbir_map.compute(predictions=preds, references=refs, gallery_labels=gallery) == {"map@all": pytest.approx(13 / 18)}
    # mAP@3 of the default (textbook) protocol divides by the relevant items retrieved (2), "min_k_relevant" by min(3, R=3)
    assert sbir_map.compute(predictions=preds, references=refs, gallery_labels=gallery, k=3) == {"map@3": pytest.approx((1 + 2 / 3) / 2)}
    out = sbir_map.compute(predictions=preds, references=refs, gallery_labels=gallery, k=3, normalize="min_k_relevant")
    assert out == {"map@3": pytest.approx((1 + 2 / 3) / 3)}
    # no_relevant: a query of a class absent from the gallery counts 0, or is left out
    two = [[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]] * 2
    assert sbir_map.compute(predictions=two, references=[1, 7], gallery_labels=gallery) == {"map@all": pytest.approx(13 / 36)}
    assert sbir_map.compute(predictions=two, references=[1, 7], gallery_labels=gallery, no_relevant="exclude") == {"map@all": pytest.approx(13 / 18)}
    square = [[1.0, 0.2, 0.5], [0.2, 1.0, 0.1], [0.5, 0.1, 1.0]]  # test_exclude_self_removes_the_query_from_its_gallery
    assert sbir_map.compute(predictions=square, references=[0, 0, 1], gallery_labels=[0, 0, 1], exclude_self=True) == {"map@all": pytest.approx(0.5)}
    assert sbir_map.compute(predictions=preds, references=refs, gallery_labels=gallery, protocol="sem_pcyc")["map@all"] == pytest.approx(
        mean_average_precision(SCORES, QUERY, GALLERY, protocol="sem_pcyc"))
    with pytest.raises(ValueError, match=r"^sbir_map needs `gallery_labels=` \(the class of every gallery item\)$"):
        sbir_map.compute(predictions=preds, references=refs)

    precision = scripts["sbir_precision"].SbirPrecision(keep_in_memory=True)
    assert precision.compute(predictions=preds, references=refs, gallery_labels=gallery) == {"p@100": pytest.approx(3 / 6)}  # k=100 clipped to G
    assert precision.compute(predictions=preds, references=refs, gallery_labels=gallery, k=2) == {"p@2": 0.5}
    assert precision.compute(predictions=preds, references=refs, gallery_labels=gallery, k=4, normalize="min_k_relevant") == {"p@4": pytest.approx(2 / 3)}
    assert precision.compute(predictions=preds, references=refs, gallery_labels=gallery, k=4, protocol="doodle2search") == {"p@4": pytest.approx(2 / 3)}
    assert precision.compute(predictions=two, references=[1, 7], gallery_labels=gallery, k=2, no_relevant="exclude") == {"p@2": 0.5}
    assert precision.compute(predictions=square, references=[0, 0, 1], gallery_labels=[0, 0, 1], k=1, exclude_self=True) == {"p@1": pytest.approx(1 / 3)}
    with pytest.raises(ValueError, match=r"^sbir_precision needs `gallery_labels=` \(the class of every gallery item\)$"):
        precision.compute(predictions=preds, references=refs)

    accuracy = scripts["sbir_accuracy_at_k"].SbirAccuracyAtK(keep_in_memory=True)
    scores = [[0.9, 0.5, 0.5, 0.5], [0.1, 0.2, 0.3, 0.4], [0.3, 0.9, 0.8, 0.1], [0.2, 0.6, 0.7, 0.5]]  # ranks [2, 0, 2, 1]
    assert accuracy.compute(predictions=scores, references=[2, 3, 0, 1]) == {"acc@1": 0.25, "acc@5": 1.0, "acc@10": 1.0}
    assert accuracy.compute(predictions=scores, references=[2, 3, 0, 1], k=2) == {"acc@2": 0.5}
    assert accuracy.compute(predictions=scores, references=[2, 3, 0, 1], k=[1, 2], exclude_self=True) == {"acc@1": 0.25, "acc@2": 1.0}
    # The inputs they declare (what evaluate checks add_batch against).
    for script, cls in ((sbir_map, "SbirMap"), (precision, "SbirPrecision"), (accuracy, "SbirAccuracyAtK")):
        features = script._info().features
        assert set(features) == {"predictions", "references"}, cls
        assert features["references"].dtype == "int64" and features["predictions"].feature.dtype == "float32", cls


def test_retrieval_metrics_options_label_kinds_and_no_queries():
    # The one-query example: rel [1, 0, 1, 0, 0, 1], R = 3; hits@3 = 2, hits@4 = 2.
    out = retrieval_metrics(SCORES, QUERY, GALLERY, map_ks=(3,), precision_ks=(4,))
    assert (out["map@3"], out["p@4"]) == (pytest.approx((1 + 2 / 3) / 2), 0.5)  # textbook: / retrieved, / k
    assert "per_class" in out  # on by default
    out = retrieval_metrics(SCORES, QUERY, GALLERY, map_ks=(3,), precision_ks=(4,), map_normalize="min_k_relevant",
                            precision_normalize="min_k_relevant", chunk_size=1)
    assert (out["map@3"], out["p@4"]) == (pytest.approx((1 + 2 / 3) / 3), pytest.approx(2 / 3))  # / min(k, R)
    assert out["protocol"] == "textbook (map_normalize=min_k_relevant, precision_normalize=min_k_relevant)"
    square = torch.tensor([[1.0, 0.2, 0.5], [0.2, 1.0, 0.1], [0.5, 0.1, 1.0]])  # test_exclude_self_removes_the_query_from_its_gallery
    out = retrieval_metrics(square, [0, 0, 1], [0, 0, 1], map_ks=(), precision_ks=(1,), exclude_self=True, per_class=False)
    assert (out["map@all"], out["p@1"], out["num_gallery"]) == (pytest.approx(0.5), pytest.approx(1 / 3), 2)  # each query's gallery: the 2 others
    assert "per_class" not in out
    with pytest.raises(ValueError, match=r"^`chunk_size` must be a positive integer, got 0$"):
        retrieval_metrics(SCORES, QUERY, GALLERY, chunk_size=0)
    # Class names are reported sorted, with how many gallery items each has.
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.9, 0.4]])
    rows = retrieval_metrics(scores, ["zebra", "apple"], ["zebra", "apple", "zebra"])["per_class"]
    assert [(r["label"], r["num_queries"], r["num_gallery_relevant"], r["map@all"]) for r in rows] == [
        ("apple", 1, 1, 1.0), ("zebra", 1, 2, pytest.approx((1 + 2 / 3) / 2))]
    # Labels that cannot be sorted together keep the order they are first seen in.
    rows = retrieval_metrics(scores, [3, "a"], ["a", 3, 3])["per_class"]
    assert [r["label"] for r in rows] == [3, "a"]
    # No queries at all: nothing to average (NaN), not an error.
    empty = retrieval_metrics(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), [0, 1, 0], per_class=False)
    assert math.isnan(empty["map@all"]) and empty["num_queries"] == 0 and empty["num_gallery"] == 3


def test_protocol_overrides_are_named_and_keep_cut_offs_as_tuples():
    from hf_sbir.metrics import get_protocol

    sake = get_protocol("sake")
    assert sake.with_overrides(average=None) is sake  # nothing changed
    changed = sake.with_overrides(no_relevant="zero")
    # An explicit no_relevant applies to P@k too (sake keeps precision_no_relevant="zero" of its own).
    assert changed.name == "sake (no_relevant=zero)" and changed.precision_no_relevant is None
    both = sake.with_overrides(no_relevant="zero", precision_no_relevant="exclude")
    assert both.precision_no_relevant == "exclude" and both.name == "sake (no_relevant=zero, precision_no_relevant=exclude)"
    cut = sake.with_overrides(map_ks=[10, 20], precision_ks=[5])
    assert cut.name == "sake" and cut.map_ks == (10, 20) and cut.precision_ks == (5,)  # cut-offs are not in the name
    assert cut.settings()["map_ks"] == [10, 20] and hash(cut)  # a frozen protocol stays hashable


def test_score_matrix_errors_and_integer_scores():
    with pytest.raises(ValueError, match=r"^`scores` has an empty gallery \(G = 0\)$"):
        mean_average_precision(torch.zeros(1, 0), [0], [])
    assert mean_average_precision(torch.tensor([[3, 2, 1]]), [1], [0, 1, 1]) == pytest.approx((1 / 2 + 2 / 3) / 2)  # ints
    assert mean_average_precision(torch.tensor([[5.0]]), [1], [1]) == 1.0  # a gallery of one item is fine
    assert precision_at_k(torch.tensor([[0.1, 0.9]]), [1], [1, 0], 1) == 0.0
    with pytest.raises(ValueError, match=r"^exclude_self=True needs a gallery of at least 2 items$"):
        mean_average_precision(torch.tensor([[1.0]]), [0], [0], exclude_self=True)
    # two items: each query's gallery is the other one
    assert mean_average_precision(torch.tensor([[1.0, 0.5], [0.5, 1.0]]), [0, 0], [0, 0], exclude_self=True) == 1.0
    with pytest.raises(ValueError, match=r"^got 2 query labels for 1 score rows$"):
        mean_average_precision(SCORES, [1, 1], GALLERY)


def test_labels_given_as_tensors_or_arrays_match_equal_values_on_the_other_side():
    """A label is its value, whatever container holds it: integer query labels in a tensor against a gallery
    whose labels are not all integers, and float labels in a tensor, still find their relevant items (the
    elements of a tensor are 0-d tensors, which compare by identity as dictionary keys)."""
    from hf_sbir.metrics.retrieval_metrics import encode_labels

    scores = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.9, 0.4]])
    expected = mean_average_precision(scores, [1, 2], [1, 2, "x"])  # lists: query 0 finds item 0, query 1 item 1
    assert expected == 1.0
    for query in (torch.tensor([1, 2]), np.array([1, 2])):
        assert mean_average_precision(scores, query, [1, 2, "x"]) == expected, type(query)
        q, g, names = encode_labels(query, [1, 2, "x"])
        assert [names[i] for i in q] == [1, 2] and [names[i] for i in g] == [1, 2, "x"]
    for query, gallery in ((torch.tensor([0.5, 1.5]), torch.tensor([0.5, 1.5, 2.5])), (np.array([0.5, 1.5]), [0.5, 1.5, 2.5])):
        q, g, names = encode_labels(query, gallery)
        assert q.tolist() == [0, 1] and g.tolist() == [0, 1, 2] and names == [0.5, 1.5, 2.5]
        assert all(type(n) is float for n in names)  # plain Python values, as with lists
        assert mean_average_precision(scores, query, gallery) == 1.0


# ------------------------------------------------------------------------------ found by mutation testing
def test_float64_and_half_scores_break_ties_by_gallery_index_like_float32():
    # Only float32 on CPU takes the numpy key sort; float64 (and, off the CPU, everything) goes through
    # torch.sort, which must be the stable one: torch's default CPU sort reorders ties in rows of more
    # than 16 items. Half-precision scores are ranked as their (exact) float32 values.
    gen = torch.Generator().manual_seed(2)
    scores32 = torch.randint(0, 3, (5, 40), generator=gen).float()  # rows of 40 items in 3 tie groups
    q = torch.randint(0, 3, (5,), generator=gen)
    g = torch.randint(0, 3, (40,), generator=gen)
    rm = importlib.import_module("hf_sbir.metrics.retrieval_metrics")
    expected = torch.sort(scores32, dim=1, descending=True, stable=True).indices
    assert torch.equal(rm.ranking_order(scores32.double()), expected)
    reference = retrieval_metrics(scores32, q, g, map_ks=(10,), precision_ks=(5,), protocol="sem_pcyc")
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        assert retrieval_metrics(scores32.to(dtype), q, g, map_ks=(10,), precision_ks=(5,), protocol="sem_pcyc") == reference, dtype
    target = expected[:, 20]  # a target inside a tie group: it loses to the equal items at lower indices
    assert target_ranks(scores32.double(), target).tolist() == [20] * 5


def test_ranking_off_the_cpu_uses_torch_sort():
    # The numpy key sort only runs on CPU; scores on an accelerator are ranked there ("meta" stands in for one).
    rm = importlib.import_module("hf_sbir.metrics.retrieval_metrics")
    order = rm.ranking_order(torch.zeros(2, 3, device="meta"))
    assert order.device.type == "meta" and order.shape == (2, 3) and order.dtype == torch.long


def test_per_query_values_and_means_are_float64_exact():
    # Results are float64: a precision of 2/3 must not pass through float32 (0.6666667, 2e-8 off), neither in
    # the per-query values nor in the class means.
    exact = dict(rel=0, abs=1e-15)
    assert mean_average_precision(SCORES, QUERY, GALLERY, reduction="none").tolist() == pytest.approx([13 / 18], **exact)
    assert mean_average_precision(SCORES, QUERY, GALLERY, k=3, reduction="none").tolist() == pytest.approx([(1 + 2 / 3) / 2], **exact)
    assert precision_at_k(SCORES, QUERY, GALLERY, 3, reduction="none").tolist() == pytest.approx([2 / 3], **exact)
    assert precision_at_k(SCORES, QUERY, GALLERY, 3, reduction="none").dtype == torch.float64
    assert mean_average_precision(SCORES, QUERY, GALLERY, average="class") == pytest.approx(13 / 18, **exact)
    assert precision_at_k(SCORES, QUERY, GALLERY, 3, average="class") == pytest.approx(2 / 3, **exact)
    out = retrieval_metrics(SCORES, QUERY, GALLERY, map_ks=(3,), precision_ks=(3,), protocol="sake")
    assert out["map@3"] == pytest.approx((1 + 2 / 3) / 3, **exact) and out["p@3"] == pytest.approx(2 / 3, **exact)


def test_zse_sbir_precision_of_queries_with_a_single_relevant_item():
    # hits@min(k, R) / min(k, R) with R = 1 looks at the first item only: 1 when it is the relevant one, else 0
    # (the relevant item second counts nothing, though it is inside the top k).
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.5, 0.9, 0.1]])
    for chunk in (None, 1):
        values = precision_at_k(scores, [1, 1], [1, 0, 0], 2, protocol="zse_sbir", reduction="none", chunk_size=chunk)
        assert values.tolist() == [1.0, 0.0]
    assert precision_at_k(scores, [1, 1], [1, 0, 0], 2, normalize="min_k_relevant", reduction="none").tolist() == [1.0, 1.0]


def test_exclude_self_in_chunks_equals_one_pass():
    gen = torch.Generator().manual_seed(5)
    emb = torch.randn(7, 4, generator=gen)
    scores = emb @ emb.T
    labels = [0, 1, 0, 1, 2, 2, 0]
    for protocol in ("textbook", "sem_pcyc"):
        whole = retrieval_metrics(scores, labels, labels, map_ks=(3,), precision_ks=(2,), protocol=protocol, exclude_self=True)
        for chunk in (1, 3):
            chunked = retrieval_metrics(scores, labels, labels, map_ks=(3,), precision_ks=(2,), protocol=protocol,
                                        exclude_self=True, chunk_size=chunk)
            assert chunked == whole, (protocol, chunk)
        assert whole["num_gallery"] == 6


def test_chunk_statistics_report_the_effective_gallery_size_and_check_the_ap_kind():
    rm = importlib.import_module("hf_sbir.metrics.retrieval_metrics")
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.4], [0.3, 0.6, 0.7]])
    q, g = torch.tensor([0, 1, 0]), torch.tensor([0, 1, 0])
    assert int(rm.chunk_ranking_stats(scores, q, g, [2])["gallery_size"]) == 3
    stats = rm.chunk_ranking_stats(scores, q, g, [2], exclude_index=torch.arange(3))
    assert int(stats["gallery_size"]) == 2 and stats["num_relevant"].tolist() == [1, 0, 1]
    with pytest.raises(ValueError) as err:
        rm.chunk_ranking_stats(scores, q, g, [2], ap_kinds=("interpolated",))
    assert str(err.value) == "`average_precision` must be one of ['trec', 'voc', 'sklearn'], got 'interpolated'"


def test_error_messages_are_exact_one_liners():
    def message(fn, *args, **kwargs):
        with pytest.raises(ValueError) as err:
            fn(*args, **kwargs)
        return str(err.value)

    assert message(mean_average_precision, torch.tensor([[float("nan"), 1.0]]), [0], [0, 1]) == (
        "`scores` contains NaN; rankings are undefined (replace NaN with -inf to rank last)")
    assert message(accuracy_at_k, torch.tensor([[float("nan"), 1.0]]), [0], 1) == (
        "`scores` contains NaN; rankings are undefined (replace NaN with -inf to rank last)")
    assert message(retrieval_metrics, SCORES, QUERY, GALLERY, map_ks=(200, 0)) == "`map_ks` must be a positive integer, got 0"
    assert message(retrieval_metrics, SCORES, QUERY, GALLERY, precision_ks=(1.5,)) == "`precision_ks` must be a positive integer, got 1.5"
    scores = torch.rand(3, 3)
    assert message(accuracy_at_k, scores, [0, 2, 1], 1, exclude_self=True) == "a query's target is its own excluded (self) item"


def test_instance_metrics_of_no_queries_are_nan():
    # Nothing to average (NaN), as for the label metrics; not an error and not a made-up rank.
    out = instance_metrics(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), ks=(1, 2))
    assert list(out) == ["acc@1", "acc@2"] and all(math.isnan(v) for v in out.values())
    assert math.isnan(accuracy_at_k(torch.zeros(0, 3), [], 1))
    ranks = target_ranks(torch.zeros(0, 3), [])
    assert ranks.tolist() == [] and ranks.dtype == torch.long  # ranks are int64, as for any number of queries


def test_protocol_settings_are_the_fields_as_json():
    from hf_sbir.metrics import get_protocol

    textbook = get_protocol("textbook")
    assert textbook.settings() == {
        "name": "textbook", "average_precision": "trec", "map_normalize": "retrieved", "precision_normalize": "k",
        "no_relevant": "zero", "average": "query", "precision_no_relevant": None, "map_ks": [200],
        "precision_ks": [100, 200], "reference": textbook.reference,
    }


def test_load_metric_passes_its_options_to_evaluate(offline):
    metric = load_metric("sbir_map", keep_in_memory=True, experiment_id="run-7")
    assert metric.experiment_id == "run-7" and metric.keep_in_memory


def test_evaluate_scripts_describe_themselves_and_pass_the_protocol():
    # What a user reads on the loaded module (metric.description, .citation, .reference_urls,
    # .inputs_description): the protocols and the tie rule are stated, and the inputs documented.
    scripts = {n: importlib.import_module(f"hf_sbir.metrics.evaluate_modules.{n}.{n}") for n in METRIC_NAMES}
    sbir_map = scripts["sbir_map"].SbirMap(keep_in_memory=True)
    precision = scripts["sbir_precision"].SbirPrecision(keep_in_memory=True)
    accuracy = scripts["sbir_accuracy_at_k"].SbirAccuracyAtK(keep_in_memory=True)
    for metric in (sbir_map, precision):
        assert "protocol=" in metric.description and "zse_sbir" in metric.description and "ties" in metric.description.lower()
        assert "Semantically Tied Paired Cycle Consistency" in metric.citation
        assert metric.reference_urls == ["https://github.com/AnjanDutta/sem-pcyc"]
        assert "gallery_labels" in metric.inputs_description and "protocol" in metric.inputs_description
    assert "gallery index" in accuracy.description and "Sketch Me That Shoe" in accuracy.citation
    assert accuracy.reference_urls == ["https://github.com/seuliufeng/DeepSBIR"]
    assert "exclude_self" in accuracy.inputs_description
    # protocol= reaches the computation: on tied scores SAKE's interpolated AP differs from the textbook one.
    tied = [[0.9, 0.8, 0.8, 0.7, 0.6, 0.5]]
    sake = sbir_map.compute(predictions=tied, references=[0], gallery_labels=[1, 0, 1, 0, 0, 1], protocol="sake")
    assert sake == {"map@all": pytest.approx(0.6)}
    assert sbir_map.compute(predictions=tied, references=[0], gallery_labels=[1, 0, 1, 0, 0, 1]) == {"map@all": pytest.approx(1.6 / 3)}


def test_integer_labels_are_used_as_they_are_and_containers_without_reshape_are_read_as_sequences():
    from hf_sbir.metrics.retrieval_metrics import encode_labels

    # Integer labels keep their values (no joint re-numbering, no names) on either container.
    for query, gallery in ((torch.tensor([5, 3]), [3, 7, 5]), ([5, 3], np.array([3, 7, 5])), (np.array([5, 3]), torch.tensor([3, 7, 5]))):
        q, g, names = encode_labels(query, gallery)
        assert (q.tolist(), g.tolist(), names) == ([5, 3], [3, 7, 5], None)
        assert q.dtype == g.dtype == torch.long
    # A pandas column of class names (it has .tolist() but no .reshape()) is a sequence of labels.
    pd = pytest.importorskip("pandas")
    q, g, names = encode_labels(pd.Series(["dog", "cat"]), pd.Series(["cat", "dog", "cat"]))
    assert (q.tolist(), g.tolist(), names) == ([1, 0], [0, 1, 0], ["cat", "dog"])
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.9, 0.4]])  # cat: rel [1, 0, 1] -> (1 + 2/3) / 2; dog: rel [1, 0, 0] -> 1
    assert mean_average_precision(scores, pd.Series(["cat", "dog"]), pd.Series(["cat", "dog", "cat"])) == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)


def test_evaluate_modules_refuse_gallery_labels_that_are_not_class_ids():
    # references are int64 features, so gallery labels must be class ids too: a fractional label was truncated
    # (1.5 -> class 1: a wrong score, silently) and class names failed with numpy's "invalid literal for int()".
    from hf_sbir.metrics.retrieval_metrics import integer_class_ids

    scripts = {n: importlib.import_module(f"hf_sbir.metrics.evaluate_modules.{n}.{n}") for n in ("sbir_map", "sbir_precision")}
    metrics = {"sbir_map": scripts["sbir_map"].SbirMap(keep_in_memory=True), "sbir_precision": scripts["sbir_precision"].SbirPrecision(keep_in_memory=True)}
    preds = SCORES.tolist()  # one query of class 1, gallery [1, 0, 1, 0, 0, 1]
    for name, metric in metrics.items():
        for gallery, bad in ((["dog", "cat", "dog", "cat", "cat", "dog"], "'dog'"), ([1, 0, 1.5, 0, 0, 1], "1.5")):
            with pytest.raises(ValueError) as err:
                metric.compute(predictions=preds, references=[1], gallery_labels=gallery)
            assert str(err.value) == f"{name} needs integer class ids in `gallery_labels=`, like `references` (map class names to ids first); got {bad}"
        # Whole-number floats (a float tensor of ids) are ids.
        value = metric.compute(predictions=preds, references=[1], gallery_labels=[1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
        assert list(value.values()) == [pytest.approx(13 / 18 if name == "sbir_map" else 0.5)]
    ok = {"ints": [3, 0], "bools": np.array([True, False]), "floats": torch.tensor([3.0, 0.0]), "uint8": np.array([3, 0], dtype=np.uint8)}
    for kind, labels in ok.items():
        ids = integer_class_ids(labels, "m", "g")
        assert ids.dtype == np.int64 and ids.tolist() == ([1, 0] if kind == "bools" else [3, 0]), kind
    for empty in ([], np.array([], dtype=str)):
        assert integer_class_ids(empty, "m", "g").tolist() == [] and integer_class_ids(empty, "m", "g").dtype == np.int64
    assert integer_class_ids(np.array([2, 0], dtype=object), "m", "g").tolist() == [2, 0]
    for labels, bad in (([None, 1], "None"), ([1, None, "x"], "None"), (["a", 1], "'a'"), ([1.0, float("inf")], "inf"), ([2.0, float("nan")], "nan"), ([1.0, 2.5, 3.5], "2.5")):
        with pytest.raises(ValueError) as err:
            integer_class_ids(labels, "m", "g")
        assert str(err.value) == f"m needs integer class ids in `g=`, like `references` (map class names to ids first); got {bad}"
