"""Evaluation protocols (`hf_sbir.metrics.PROTOCOLS`) against worked examples computed by hand.

One gallery of 6 items (classes a, b) and four queries; rows 0, 2 and 3 share the scores
[0.9, 0.8, 0.8, 0.7, 0.6, 0.5] (a tie between gallery items 1 and 2), row 1 ranks the gallery in
reverse. Every class has fewer gallery items than the protocols' k = 100 / 200 (G = 6), and the
query of class c has no relevant item at all.
"""

import math

import numpy as np
import pytest
import torch

from hf_sbir.metrics import (
    PROTOCOLS,
    RetrievalProtocol,
    get_protocol,
    load_metric,
    mean_average_precision,
    precision_at_k,
    retrieval_metrics,
)

SCORES = torch.tensor(
    [
        [0.9, 0.8, 0.8, 0.7, 0.6, 0.5],
        [0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
        [0.9, 0.8, 0.8, 0.7, 0.6, 0.5],
        [0.9, 0.8, 0.8, 0.7, 0.6, 0.5],
    ]
)
QUERIES = ["a", "a", "b", "c"]
GALLERY = ["b", "a", "b", "a", "a", "b"]
# Ranked relevance (stable ties: gallery index first):
#   q0 (a): ranking 0,1,2,3,4,5 -> rel [0,1,0,1,1,0]; P@i = [0, 1/2, 1/3, 2/4, 3/5, 3/6]; R = 3
#   q1 (a): ranking 5,4,3,2,1,0 -> rel [0,1,1,0,1,0]; P@i = [0, 1/2, 2/3, 2/4, 3/5, 3/6]; R = 3
#   q2 (b): ranking 0,1,2,3,4,5 -> rel [1,0,1,0,0,1]; P@i = [1, 1/2, 2/3, 2/4, 2/5, 3/6]; R = 3
#   q3 (c): R = 0
#
# Per-query AP@all (numerator = sum of the precision term at the relevant ranks, / R = 3):
#   TREC (P@i):                       q0 (1/2 + 2/4 + 3/5) = 1.6       -> 0.533333
#                                     q1 (1/2 + 2/3 + 3/5) = 1.766667  -> 0.588889
#                                     q2 (1 + 2/3 + 3/6)   = 2.166667  -> 0.722222
#   VOC (max P@j for j >= i):         q0 (3/5 + 3/5 + 3/5) = 1.8       -> 0.6
#                                     q1 (2/3 + 2/3 + 3/5) = 1.933333  -> 0.644444
#                                     q2 (1 + 2/3 + 3/6)               -> 0.722222
#   sklearn (P at the end of the tie  q0: rank 2 ties with rank 3 -> P@3 = 1/3:
#            group, ranks 2-3 in q0/q2)  (1/3 + 2/4 + 3/5) = 1.433333  -> 0.477778
#                                     q1 no ties                       -> 0.588889
#                                     q2: rank 3 ends its group        -> 0.722222
AP_TREC = [1.6 / 3, (1 / 2 + 2 / 3 + 3 / 5) / 3, (1 + 2 / 3 + 1 / 2) / 3]
AP_VOC = [1.8 / 3, (2 / 3 + 2 / 3 + 3 / 5) / 3, (1 + 2 / 3 + 1 / 2) / 3]
AP_SKLEARN = [(1 / 3 + 2 / 4 + 3 / 5) / 3, AP_TREC[1], AP_TREC[2]]


def test_textbook_is_the_default_and_counts_the_no_relevant_query_as_zero():
    out = retrieval_metrics(SCORES, QUERIES, GALLERY, per_class=False)
    assert out["protocol"] == "textbook"
    # mAP@all = (0.533333 + 0.588889 + 0.722222 + 0) / 4 = 0.461111
    assert out["map@all"] == pytest.approx(sum(AP_TREC) / 4)
    # k = 200 > G = 6: clipped; hits@6 = R -> mAP@200 = mAP@all
    assert out["map@200"] == pytest.approx(sum(AP_TREC) / 4)
    # P@100 -> hits@6 / 6 = 3/6 for q0..q2, 0 for q3 -> 1.5 / 4 = 0.375
    assert out["p@100"] == pytest.approx(0.375) and out["p@200"] == pytest.approx(0.375)


def test_sake_voc_interpolated_ap_skips_queries_without_relevant_items():
    out = retrieval_metrics(SCORES, QUERIES, GALLERY, protocol="sake", per_class=False)
    # VOC AP, q3 skipped (NaN in their code, np.nanmean): (0.6 + 0.644444 + 0.722222) / 3 = 0.655556
    assert out["map@all"] == pytest.approx(sum(AP_VOC) / 3)
    assert out["map@200"] == pytest.approx(sum(AP_VOC) / 3)  # top min(200, 6); N = min(6, R) = R
    # eval_precision never divides by R: q3 scores 0 and stays in the mean -> 1.5 / 4 = 0.375
    assert out["p@100"] == pytest.approx(0.375)
    assert out["num_excluded_queries"] == 1


def test_zse_sbir_precision_looks_at_the_top_min_k_r_only():
    out = retrieval_metrics(SCORES, QUERIES, GALLERY, protocol="zse_sbir", per_class=False)
    assert out["map@all"] == pytest.approx(sum(AP_VOC) / 3)
    # hits@min(100, R=3) / 3: q0 rel[:3] = [0,1,0] -> 1/3; q1 [0,1,1] -> 2/3; q2 [1,0,1] -> 2/3;
    # q3: min(k, 0) = 0 items -> NaN, skipped -> (1/3 + 2/3 + 2/3) / 3 = 0.555556
    assert out["p@100"] == pytest.approx(5 / 9) and out["p@200"] == pytest.approx(5 / 9)


def test_sem_pcyc_sklearn_ap_groups_ties():
    out = retrieval_metrics(SCORES, QUERIES, GALLERY, protocol="sem_pcyc", per_class=False)
    # (0.477778 + 0.588889 + 0.722222 + 0) / 4 = 0.447222: q3 counts 0 (apsak's zeros)
    assert out["map@all"] == pytest.approx(sum(AP_SKLEARN) / 4)
    assert out["map@200"] == pytest.approx(sum(AP_SKLEARN) / 4)
    assert out["p@100"] == pytest.approx(0.375)  # prec: hits@k / min(k, G)


def test_doodle2search_has_no_map_at_200_and_divides_precision_by_min_k_r():
    out = retrieval_metrics(SCORES, QUERIES, GALLERY, protocol="doodle2search", per_class=False)
    assert "map@200" not in out
    assert out["map@all"] == pytest.approx(sum(AP_SKLEARN) / 4)
    # hits@6 / min(6, R = 3) = 1 for q0..q2; q3 counts 0 -> 3 / 4
    assert out["p@100"] == pytest.approx(0.75)


@pytest.mark.parametrize("name", ["dsn", "tc_net"])
def test_per_class_mean_of_dsn_and_tc_net(name):
    out = retrieval_metrics(SCORES, QUERIES, GALLERY, protocol=name, per_class=False)
    # class a: (0.6 + 0.644444) / 2 = 0.622222; class b: 0.722222; class c: all NaN -> skipped
    # -> (0.622222 + 0.722222) / 2 = 0.672222 (per-query mean would be 0.655556)
    assert out["map@all"] == pytest.approx(((AP_VOC[0] + AP_VOC[1]) / 2 + AP_VOC[2]) / 2)
    # P@100: class a 0.5, class b 0.5, class c 0 -> 1/3
    assert out["p@100"] == pytest.approx(1 / 3)
    # the option is available on any protocol
    assert retrieval_metrics(SCORES, QUERIES, GALLERY, protocol="sake", average="class")["map@all"] == pytest.approx(
        out["map@all"]
    )


def test_cut_inside_the_ranking_and_through_a_tie_group():
    # q0 alone, k = 4 (< G, and > R = 3) and k = 2 (< R).
    # top 4: rel [0,1,0,1], hits@4 = 2
    #   textbook: (1/2 + 2/4) / hits@4 = 1.0 / 2 = 0.5
    #   sake: VOC within the top 4 only: rank 2 -> max(1/2, 1/3, 2/4) = 1/2; rank 4 -> 1/2;
    #         / min(4, R=3) = 1.0 / 3 = 0.333333 (interpolating over the whole list would give 1.1/3)
    #   sem_pcyc: rank 2's tie group ends at rank 3 -> 1/3; rank 4 -> 2/4; / hits@4 = 0.416667
    # top 2: the tie group {ranks 2, 3} is cut at rank 2
    #   sem_pcyc: within the top-2 list rank 2 ends its group -> P@2 = 1/2; / hits@2 = 1 -> 0.5
    #   sake: 1/2 / min(2, 3) = 0.25
    # P@4: textbook 2/4; doodle2search 2 / min(4, 3) = 0.666667; zse_sbir hits@3 / 3 = 1/3
    expected = {
        "textbook": (0.5, 0.5, 0.5),
        "sake": (1 / 3, 0.25, 0.5),
        "sem_pcyc": (1.25 / 3, 0.5, 0.5),
        "doodle2search": (1.25 / 3, 0.5, 2 / 3),
        "zse_sbir": (1 / 3, 0.25, 1 / 3),
    }
    for name, (map4, map2, p4) in expected.items():
        out = retrieval_metrics(SCORES[:1], QUERIES[:1], GALLERY, map_ks=(4, 2), precision_ks=(4,), protocol=name)
        assert (out["map@4"], out["map@2"], out["p@4"]) == pytest.approx((map4, map2, p4)), name


def test_single_functions_take_the_protocol():
    assert mean_average_precision(SCORES, QUERIES, GALLERY, protocol="sake") == pytest.approx(sum(AP_VOC) / 3)
    assert mean_average_precision(SCORES, QUERIES, GALLERY, k=4, protocol="sem_pcyc") == pytest.approx(
        retrieval_metrics(SCORES, QUERIES, GALLERY, map_ks=(4,), protocol="sem_pcyc")["map@4"]
    )
    assert precision_at_k(SCORES, QUERIES, GALLERY, 100, protocol="zse_sbir") == pytest.approx(5 / 9)
    per_query = mean_average_precision(SCORES, QUERIES, GALLERY, protocol="sake", reduction="none")
    assert per_query[:3].tolist() == pytest.approx(AP_VOC) and math.isnan(per_query[3])


def test_presets_name_the_code_they_reproduce():
    for name, protocol in PROTOCOLS.items():
        assert protocol.name == name and protocol.reference
    for name in ("sake", "zse_sbir", "sem_pcyc", "doodle2search", "dsn", "tc_net"):
        assert "/" in PROTOCOLS[name].reference  # owner/repository path
    with pytest.raises(ValueError, match="unknown evaluation protocol 'voc'.*textbook"):
        get_protocol("voc")
    with pytest.raises(ValueError, match="average_precision"):
        RetrievalProtocol("mine", average_precision="interpolated")
    custom = get_protocol("sake").with_overrides(no_relevant="zero")
    assert custom.name == "sake (no_relevant=zero)" and custom.precision_no_relevant is None


# --------------------------------------------------------------------------- independent references
def _rank(row: np.ndarray) -> np.ndarray:
    return np.array(sorted(range(len(row)), key=lambda j: (-row[j], j)))


def _voc(rel_full: np.ndarray, top: int | None) -> float:
    r = int(rel_full.sum())
    rel = rel_full if top is None else rel_full[: min(top, len(rel_full))]
    norm = r if top is None else min(top, r)
    if norm == 0:
        return float("nan")
    precision = np.cumsum(rel) / np.arange(1, len(rel) + 1)
    area, recall_before = 0.0, 0.0
    for i in range(len(rel)):
        recall = rel[: i + 1].sum() / norm
        if recall > recall_before:  # recall steps up at each relevant rank
            area += (recall - recall_before) * precision[i:].max()
            recall_before = recall
    return area


def test_voc_and_grouped_ap_equal_definitions_on_random_tied_scores():
    gen = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 6, (30, 40), generator=gen).float() / 5  # many ties
    q = torch.randint(0, 4, (30,), generator=gen)
    g = torch.randint(0, 4, (40,), generator=gen)
    voc_all, voc_10, grouped_all, grouped_10 = [], [], [], []
    for i in range(30):
        row = scores[i].numpy()
        order = _rank(row)
        rel = (g.numpy()[order] == q[i].item()).astype(float)
        voc_all.append(_voc(rel, None))
        voc_10.append(_voc(rel, 10))
        ranked = row[order]
        for cut, store in ((None, grouped_all), (10, grouped_10)):
            n = len(rel) if cut is None else cut
            hits = rel[:n].sum()
            terms = []
            for j in range(n):
                if rel[j]:
                    end = max(e for e in range(n) if ranked[e] == ranked[j])  # last of its tie group
                    terms.append(rel[: end + 1].sum() / (end + 1))
            store.append(sum(terms) / hits if hits else 0.0)
    sake = retrieval_metrics(scores, q, g, map_ks=(10,), protocol="sake", chunk_size=7)
    assert sake["map@all"] == pytest.approx(np.nanmean(voc_all)) and sake["map@10"] == pytest.approx(np.nanmean(voc_10))
    sem = retrieval_metrics(scores, q, g, map_ks=(10,), protocol="sem_pcyc", chunk_size=7)
    assert sem["map@all"] == pytest.approx(np.mean(grouped_all)) and sem["map@10"] == pytest.approx(np.mean(grouped_10))


def test_sem_pcyc_equals_sklearn_average_precision_score():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    gen = torch.Generator().manual_seed(4)
    scores = torch.randint(0, 8, (12, 30), generator=gen).double() / 7
    q = torch.randint(0, 3, (12,), generator=gen)
    g = torch.randint(0, 3, (30,), generator=gen)
    expected = []
    for i in range(12):
        y = (g == q[i]).int().numpy()
        expected.append(sklearn_metrics.average_precision_score(y, scores[i].numpy()) if y.any() else 0.0)
    assert retrieval_metrics(scores, q, g, protocol="sem_pcyc")["map@all"] == pytest.approx(np.mean(expected))


def test_evaluate_modules_take_the_protocol():
    preds, refs = SCORES.tolist(), [0, 0, 1, 2]
    gallery = [1, 0, 1, 0, 0, 1]
    sbir_map = load_metric("sbir_map", keep_in_memory=True)
    assert sbir_map.compute(predictions=preds, references=refs, gallery_labels=gallery, protocol="sake") == {
        "map@all": pytest.approx(sum(AP_VOC) / 3)
    }
    sbir_precision = load_metric("sbir_precision", keep_in_memory=True)
    out = sbir_precision.compute(predictions=preds, references=refs, gallery_labels=gallery, k=100, protocol="zse_sbir")
    assert out == {"p@100": pytest.approx(5 / 9)}


def test_chunk_statistics_do_not_keep_the_chunk_matrices_alive():
    # The per-query statistics of a chunk are kept until every chunk is scored; a view into the
    # chunk's (c, G) cumulative-hits matrix would keep 8 * c * G bytes per chunk alive (80 GB for
    # 10k queries against 1M items).
    import importlib

    rm = importlib.import_module("hf_sbir.metrics.retrieval_metrics")
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 50_000, generator=gen)
    stats = rm.chunk_ranking_stats(
        scores, torch.tensor([0, 1, 2, 3]), torch.randint(0, 4, (50_000,), generator=gen), [100, 200],
        ap_kinds=("trec", "voc", "sklearn"), r_ks=(100,),
    )
    for key, value in stats.items():
        assert value.untyped_storage().nbytes() <= 4 * 8, key
