"""Sketch-an-Anchor losses, each a small pure function with the paper's equation number.

Notation (paper §3.2-3.5): r are L2-normalised representations, so r_a . r_b is a cosine similarity;
tau is the temperature; gamma_i is the anchor (class) index of batch item i; A^s (s = w, v) is the
cosine-similarity matrix of the word or visual anchors (eq. 2); sigma is a row-wise softmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hf_sbir.losses.distributed import gather_no_grad, gather_with_grad


def info_nce_loss(sketch_embeds: torch.Tensor, photo_embeds: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 1, L_NCE^base: sketch i's positive is photo i (same class), every other photo is a negative.

    Args:
        sketch_embeds: (N, D) L2-normalised r_skt.
        photo_embeds: (N, D) L2-normalised r_img, paired by class with `sketch_embeds`.
    Returns: scalar loss.
    """
    logits = sketch_embeds @ photo_embeds.T / temperature
    targets = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, targets)


def anchor_similarity(anchors: torch.Tensor) -> torch.Tensor:
    """Eq. 2: A = {c_i . c_j}, cosine similarities of anchors (C, D) -> (C, C)."""
    anchors = F.normalize(anchors, dim=-1)
    return anchors @ anchors.T


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """-(1/N) sum_i sum_y p_iy log softmax(logits_i)_y."""
    return -(target_probs * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def anchored_semantic_loss(
    embeds: torch.Tensor,
    labels: torch.Tensor,
    adapted_anchors: torch.Tensor,
    anchor_sim: torch.Tensor,
    temperature: float,
    anchor_temperature: float,
) -> torch.Tensor:
    """Eq. 3, L_anc^sem for one (s, d) pair: match representations r_d^s to anchors c^s, with the target
    distribution sigma(A^s[gamma_i] / anchor_temperature) over the C anchors.

    Args:
        embeds: (N, P) L2-normalised r_d^s (word- or visual-token representations of sketches or photos).
        labels: (N,) anchor index gamma_i of each item, in [0, C).
        adapted_anchors: (C, P) L2-normalised anchors c^s the representations are compared with
            (the GCN's adapted anchors in the full model).
        anchor_sim: (C, C) A^s from eq. 2 (of the input anchors).
    """
    logits = embeds @ adapted_anchors.T / temperature
    targets = F.softmax(anchor_sim[labels] / anchor_temperature, dim=-1)
    return soft_cross_entropy(logits, targets)


def anchored_sample_loss(
    sketch_embeds: torch.Tensor,
    photo_embeds: torch.Tensor,
    labels: torch.Tensor,
    anchor_sim: torch.Tensor,
    temperature: float,
    anchor_temperature: float,
) -> torch.Tensor:
    """Eq. 4, L_anc^sample for one s: match sketches to photos, with the target distribution over the
    batch's photos given by the anchors, sigma_j(a_{gamma_i gamma_j} / anchor_temperature).

    Args:
        sketch_embeds: (N, P) L2-normalised r_skt^s.
        photo_embeds: (N, P) L2-normalised r_img^s (item j has class labels[j], same as sketch j).
        labels: (N,) anchor index gamma of each pair.
        anchor_sim: (C, C) A^s.
    """
    logits = sketch_embeds @ photo_embeds.T / temperature
    targets = F.softmax(anchor_sim[labels][:, labels] / anchor_temperature, dim=-1)
    return soft_cross_entropy(logits, targets)


@dataclass
class SketchAnAnchorLosses:
    """Every term of the training objective; `total` is their equal-weighted sum (§3.5)."""

    total: torch.Tensor
    nce: torch.Tensor
    semantic: dict[str, torch.Tensor]
    sample: dict[str, torch.Tensor]

    def as_floats(self) -> dict[str, float]:
        out = {"loss": self.total.item(), "loss_nce": self.nce.item()}
        out.update({f"loss_sem_{k}": v.item() for k, v in self.semantic.items()})
        out.update({f"loss_sample_{k}": v.item() for k, v in self.sample.items()})
        return out


def sketch_an_anchor_loss(
    sketch_out,
    photo_out,
    labels: torch.Tensor,
    adapted_anchors: dict[str, torch.Tensor],
    anchor_sims: dict[str, torch.Tensor],
    temperature: float,
    anchor_temperature: float,
    gather: bool = True,
) -> SketchAnAnchorLosses:
    """Equal-weighted total: L_NCE^base + the 4 variants of L_anc^sem + the 2 variants of L_anc^sample.

    Under data parallelism (`gather=True` and torch.distributed initialised) the in-batch terms, eq. 1 and
    eq. 4, see the global batch: every rank's sketch and photo representations (with gradient) and labels
    are gathered first (`hf_sbir.losses.distributed`). Eq. 3 compares each item with the anchors only, a
    per-sample mean, so it stays on the local slice (DDP's gradient average makes that exact).

    Args:
        sketch_out, photo_out: `SketchAnAnchorOutput`s of the paired sketch and photo batches.
        labels: (N,) anchor index of each pair.
        adapted_anchors: {"word": (C, P), "visual": (C, P)} — only the anchor kinds in use
            (empty = the InfoNCE-only baseline).
        anchor_sims: {"word": (C, C), "visual": (C, C)} from eq. 2, same keys.
    """
    everywhere = gather_with_grad if gather else (lambda t: t)
    global_labels = gather_no_grad(labels) if gather else labels
    nce = info_nce_loss(everywhere(sketch_out.embeddings), everywhere(photo_out.embeddings), temperature)
    semantic, sample = {}, {}
    for kind, anchors in adapted_anchors.items():
        sim = anchor_sims[kind]
        field = f"{kind}_embeddings"
        for domain, out in (("sketch", sketch_out), ("photo", photo_out)):
            semantic[f"{kind}_{domain}"] = anchored_semantic_loss(
                getattr(out, field), labels, anchors, sim, temperature, anchor_temperature
            )
        sample[kind] = anchored_sample_loss(
            everywhere(getattr(sketch_out, field)), everywhere(getattr(photo_out, field)), global_labels, sim,
            temperature, anchor_temperature,
        )
    total = nce + sum(semantic.values(), torch.zeros_like(nce)) + sum(sample.values(), torch.zeros_like(nce))
    return SketchAnAnchorLosses(total=total, nce=nce, semantic=semantic, sample=sample)


class SketchAnAnchorLoss(nn.Module):
    """The training objective as a module that takes the model's output (as open_clip's `ClipLoss` does):
    `loss(model(pixel_values=cat([sketches, photos]), word_anchors=w, visual_anchors=v), labels, n, w, v)`.

    The output holds sketches (first `num_sketches` rows) then photos, and the GCN-adapted anchors of the kinds
    passed to the model (`adapted_word_anchors`, `adapted_visual_anchors`); the raw anchors give eq. 2's
    similarities. Temperatures are read from `config` at each call, so a changed runtime setting applies.
    """

    def __init__(self, config, gather: bool = True):
        super().__init__()
        self.config = config
        self.gather = gather

    def forward(self, output, labels: torch.Tensor, num_sketches: int, word_anchors: torch.Tensor | None = None,
                visual_anchors: torch.Tensor | None = None) -> SketchAnAnchorLosses:
        n = num_sketches
        fields = ("embeddings", "word_embeddings", "visual_embeddings")
        sketch_out = _Rows(**{f: getattr(output, f)[:n] for f in fields})
        photo_out = _Rows(**{f: getattr(output, f)[n:] for f in fields})
        adapted, sims = {}, {}
        if word_anchors is not None:
            adapted["word"], sims["word"] = output.adapted_word_anchors, anchor_similarity(word_anchors)
        if visual_anchors is not None:
            adapted["visual"], sims["visual"] = output.adapted_visual_anchors, anchor_similarity(visual_anchors)
        return sketch_an_anchor_loss(
            sketch_out, photo_out, labels, adapted, sims,
            self.config.contrastive_temperature, self.config.anchor_similarity_temperature, gather=self.gather,
        )


@dataclass
class _Rows:
    """The sketch or photo rows of a `SketchAnAnchorOutput` (the fields the loss reads)."""

    embeddings: torch.Tensor
    word_embeddings: torch.Tensor
    visual_embeddings: torch.Tensor

