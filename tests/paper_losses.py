"""The Sketch-an-Anchor losses written literally from the paper, in plain Python loops over floats: an
oracle independent of `hf_sbir.losses` (no shared code, no torch reductions), for the tests."""

import math

import torch


def unit(rows):
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float64), dim=-1)


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _softmax(values):
    m = max(values)
    e = [math.exp(v - m) for v in values]
    return [x / sum(e) for x in e]


def _log_softmax(values):
    m = max(values)
    log_z = m + math.log(sum(math.exp(v - m) for v in values))
    return [v - log_z for v in values]


def ref_eq1(sketch, photo, tau):
    """Eq. 1: -1/N sum_i log exp(s_i . p_i / tau) / sum_j exp(s_i . p_j / tau)."""
    s, p = sketch.tolist(), photo.tolist()
    return -sum(_log_softmax([_dot(s[i], p[j]) / tau for j in range(len(p))])[i] for i in range(len(s))) / len(s)


def ref_eq2(anchors):
    c = unit(anchors.tolist()).tolist()
    return torch.tensor([[_dot(a, b) for b in c] for a in c], dtype=torch.float64)


def ref_eq3(reps, labels, anchors, sim, tau, tau_a):
    """Eq. 3: -1/N sum_i sum_y sigma_y(a_{gamma_i y}) log softmax_y(r_i . c_y / tau)."""
    r, c, a = reps.tolist(), anchors.tolist(), sim.tolist()
    total = 0.0
    for i, g in enumerate(labels):
        target = _softmax([a[g][y] / tau_a for y in range(len(c))])
        log_p = _log_softmax([_dot(r[i], c[y]) / tau for y in range(len(c))])
        total += sum(t * lp for t, lp in zip(target, log_p))
    return -total / len(r)


def ref_eq4(sketch, photo, labels, sim, tau, tau_a):
    """Eq. 4: -1/N sum_i sum_j sigma_j(a_{gamma_i gamma_j}) log softmax_j(s_i . p_j / tau)."""
    s, p, a = sketch.tolist(), photo.tolist(), sim.tolist()
    n = len(s)
    total = 0.0
    for i in range(n):
        target = _softmax([a[labels[i]][labels[j]] / tau_a for j in range(n)])
        log_p = _log_softmax([_dot(s[i], p[k]) / tau for k in range(n)])
        total += sum(t * lp for t, lp in zip(target, log_p))
    return -total / n


def ref_total(sketch, photo, labels, adapted, sims, tau, tau_a):
    """Eq. 1 + the 4 variants of eq. 3 + the 2 variants of eq. 4, equal weights (§3.5), as a dict of terms
    named like `SketchAnAnchorLosses.as_floats()`. `sketch`/`photo` have `embeddings`, `word_embeddings`,
    `visual_embeddings`; `adapted`/`sims` map "word"/"visual" to the GCN-adapted anchors and A^s."""
    labels = [int(v) for v in labels]
    terms = {"loss_nce": ref_eq1(sketch.embeddings, photo.embeddings, tau)}
    for kind in adapted:
        field = f"{kind}_embeddings"
        for domain, output in (("sketch", sketch), ("photo", photo)):
            terms[f"loss_sem_{kind}_{domain}"] = ref_eq3(getattr(output, field), labels, adapted[kind], sims[kind], tau, tau_a)
        terms[f"loss_sample_{kind}"] = ref_eq4(getattr(sketch, field), getattr(photo, field), labels, sims[kind], tau, tau_a)
    terms["loss"] = sum(terms.values())
    return terms
