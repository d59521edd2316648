"""Adapt and Align losses (Dong et al., arXiv 2305.05144), each a small pure function.

The paper summary we work from describes the method in words, without numbered equations; the
numbers below are ours, in the order the method is described, and the docstrings of the model and
the training method refer to them:

    Eq. 1  adapter:       h' = h + s * W_up act(W_down h)                    (modeling_adapt_align.py)
    Eq. 2  alignment:     logit_ic = exp(log_scale) * cos(f_i, t_c)          `alignment_logits`
    Eq. 3  L_align      = -(1/N) sum_i log softmax(logit_i)_{y_i}             `alignment_loss`
    Eq. 4  L_kd         = (1/N) sum_i d(g_student(x_i), g_teacher(x_i))       `distillation_loss`
    Eq. 5  L            = L_align + lambda * L_kd                             `adapt_align_loss`

f_i is the projected image/sketch embedding, t_c the text embedding of seen class c (CLIP text
encoder with a prompt template, or the packaged MiniLM offline), g the backbone's pooled feature of
the adapted model (student) and of the frozen pre-trained copy (teacher), d a distance that is 0 when
the two agree (1 - cosine by default, or the squared error).

Data parallelism: every term is a mean of per-sample terms (items are compared with the class text
embeddings, never with each other), so no gathering is needed: the mean over ranks of equal-sized local
means is the global mean, and DDP's gradient average gives the one-process gradient exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MAX_LOGIT_SCALE = 100.0


def alignment_logits(embeddings: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Eq. 2: scaled cosine similarities between image/sketch embeddings and class text embeddings.

    Args:
        embeddings: (N, D) image or sketch embeddings f_i, projected to the text dimension.
        text_embeds: (C, D) class text embeddings t_c.
        logit_scale: s = 1 / temperature (a float or a 0-d tensor, already exponentiated).
    Returns: (N, C) logits s * f_i . t_c / (|f_i| |t_c|).
    """
    return logit_scale * F.normalize(embeddings, dim=-1) @ F.normalize(text_embeds, dim=-1).T


def alignment_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 3: cross-entropy over the seen classes. logits (N, C), labels (N,) in [0, C). Scalar."""
    return F.cross_entropy(logits, labels)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Eq. 4: knowledge preservation, the distance between the adapted backbone's features and those of the
    frozen pre-trained backbone on the same images. Zero when they agree.

    Args:
        student: (N, H) pooled backbone features of the model being trained.
        teacher: (N, H) pooled features of the frozen pre-trained copy (no gradient flows into it).
        kind: "cosine" -> mean(1 - cos(student_i, teacher_i)); "mse" -> mean squared error.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} features differ in shape.")
    # In float32: under mixed precision the student's features may be half precision, the teacher's not.
    student, teacher = student.float(), teacher.detach().float()
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    if kind == "mse":
        return F.mse_loss(student, teacher)
    raise ValueError(f"Unknown distillation loss {kind!r}; use 'cosine' or 'mse'.")


@dataclass
class AdaptAlignLosses:
    """Eq. 5 and its terms (scalars)."""

    total: torch.Tensor
    align: torch.Tensor
    distill: torch.Tensor | None = None

    def as_floats(self) -> dict[str, float]:
        out = {"loss": float(self.total.detach()), "loss_align": float(self.align.detach())}
        if self.distill is not None:
            out["loss_distill"] = float(self.distill.detach())
        return out


def adapt_align_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    student_features: torch.Tensor | None = None,
    teacher_features: torch.Tensor | None = None,
    distillation_weight: float = 1.0,
    distillation_kind: str = "cosine",
) -> AdaptAlignLosses:
    """Eq. 5: L = L_align + lambda * L_kd (L_kd left out when lambda == 0 or no teacher features are given).

    Args:
        logits: (N, C) alignment logits of sketches and photos (eq. 2).
        labels: (N,) seen-class index of each item.
        student_features, teacher_features: (M, H) pooled backbone features for eq. 4 (M <= N: the items
            the teacher saw).
    """
    align = alignment_loss(logits, labels)
    if distillation_weight == 0 or student_features is None or teacher_features is None:
        return AdaptAlignLosses(total=align, align=align)
    distill = distillation_loss(student_features, teacher_features, distillation_kind)
    return AdaptAlignLosses(total=align + distillation_weight * distill, align=align, distill=distill)


class AdaptAlignLoss(nn.Module):
    """Eq. 5 as a module that takes the model's output: `loss(model(pixel_values=x, text_embeds=t), labels)`,
    plus, for eq. 4, the frozen teacher's pooled features of the items `student_rows` selects (all by default).
    The weight and kind of the distillation term are read from `config` at each call."""

    def __init__(self, config):
        super().__init__()
        self.config = config

    def forward(self, output, labels: torch.Tensor, teacher_features: torch.Tensor | None = None,
                student_rows: slice = slice(None)) -> AdaptAlignLosses:
        if output.logits is None:
            raise ValueError("The Adapt and Align loss needs the alignment logits: call the model with text_embeds.")
        student = output.image_features[student_rows] if teacher_features is not None else None
        return adapt_align_loss(
            output.logits, labels, student, teacher_features, self.config.distillation_weight, self.config.distillation_loss
        )


__all__ = [
    "MAX_LOGIT_SCALE",
    "AdaptAlignLoss",
    "AdaptAlignLosses",
    "adapt_align_loss",
    "alignment_logits",
    "alignment_loss",
    "distillation_loss",
]
