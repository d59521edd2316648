"""FG-SBIR losses (Sain et al., "Exploiting Unlabelled Photos for Stronger Fine-Grained SBIR", CVPR 2023),
each a small pure function.

Equation numbers follow the order of the poster in `shared/papers/stronger-fg-sbir-baseline.md`, which
does not number them:

    (1) L_CM      = max(0, m_CM + d(f_s, f_p+) - d(f_s, f_p-))             cross-modal triplet
    (2) L_IM^p    = max(0, m_p  + d(f_p, f_p+) - d(f_p, f_p-))             intra-modal photo triplet
    (3) L_IM^s    = max(0, m_s  + d(f_s, f_s+) - d(f_s, f_s-))             intra-modal sketch triplet
    (4) theta_ema = beta theta_ema + (1 - beta) theta                      (`ModelEMA`, training method)
    (5) L         = L_CM + lambda1 L_IM^p + lambda2 L_IM^s                 (+ lambda_KD L_KD with a teacher)

d is the Euclidean distance; every triplet term is averaged over the batch. For (2) the positive p+ is a
structurally augmented view of the photo p and p- another photo; for (3) s+ is another sketch of the
same photo and s- a sketch of another photo.

Data parallelism: the triplet terms (1)-(3) have explicitly drawn negatives, so each is a mean of per-sample
terms and stays on the local slice (DDP's gradient average makes N ranks exact); L_KD compares every sample
with the others of its batch, so it gathers the global batch (`hf_sbir.losses.distributed`).

Knowledge distillation (L_KD). The poster only says "nearest-neighbour pairwise distance based
distillation"; the abstract: "distil the contextual similarity present amongst the instances in the
teacher's embedding space to that in the student's embedding space, by matching the distribution over
inter-feature distances of respective samples in both embedding spaces". Our formulation: for each
sample i of a batch, a distribution over its neighbours j != i (optionally only its k nearest in teacher
space) from a softmax of negative distances at temperature tau, in teacher and in student space; L_KD is
the mean over i of KL(P_teacher_i || P_student_i). It is zero exactly when both spaces give the same
distances, and it depends on distances only (so the two spaces may differ by a rotation or in size).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hf_sbir.losses.distributed import gather_no_grad, gather_with_grad


def euclidean_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """d(a_i, b_i) = ||a_i - b_i||_2 row by row: (N, D), (N, D) -> (N,). Clamped below at 1e-12 before the square
    root, so the gradient stays finite when a_i == b_i."""
    return (a - b).pow(2).sum(dim=-1).clamp_min(1e-12).sqrt()


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """All Euclidean distances within a batch: (N, D) -> (N, N), zero diagonal."""
    squared = (x.unsqueeze(1) - x.unsqueeze(0)).pow(2).sum(dim=-1)
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return squared.clamp_min(1e-12).sqrt().masked_fill(eye, 0.0)


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float) -> torch.Tensor:
    """mean_i max(0, margin + d(anchor_i, positive_i) - d(anchor_i, negative_i)); inputs (N, D) -> scalar."""
    return F.relu(margin + euclidean_distance(anchor, positive) - euclidean_distance(anchor, negative)).mean()


def cross_modal_triplet_loss(sketch: torch.Tensor, photo: torch.Tensor, other_photo: torch.Tensor, margin: float) -> torch.Tensor:
    """Eq. 1, L_CM: a sketch (anchor) closer to its paired photo (positive) than to another photo (negative)."""
    return triplet_loss(sketch, photo, other_photo, margin)


def photo_intra_modal_triplet_loss(
    photo: torch.Tensor, augmented_photo: torch.Tensor, other_photo: torch.Tensor, margin: float
) -> torch.Tensor:
    """Eq. 2, L_IM^photo: a photo closer to its structurally augmented view than to another photo."""
    return triplet_loss(photo, augmented_photo, other_photo, margin)


def sketch_intra_modal_triplet_loss(
    sketch: torch.Tensor, same_photo_sketch: torch.Tensor, other_photo_sketch: torch.Tensor, margin: float
) -> torch.Tensor:
    """Eq. 3, L_IM^sketch: a sketch closer to another sketch of the same photo than to a sketch of another photo."""
    return triplet_loss(sketch, same_photo_sketch, other_photo_sketch, margin)


def neighbour_mask(num_samples: int, keep: torch.Tensor | None = None, device=None) -> torch.Tensor:
    """(N, N) bool: True where j is a neighbour of i (j != i, and `keep[i, j]` when given)."""
    mask = ~torch.eye(num_samples, dtype=torch.bool, device=device)
    return mask if keep is None else mask & keep


def neighbour_log_distribution(distances: torch.Tensor, temperature: float, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise log softmax(-distances / temperature) over each row's neighbours (`mask`); entries outside the mask
    are set to 0 (their probability is 0). distances (N, N) -> (N, N)."""
    logits = (-distances / temperature).masked_fill(~mask, float("-inf"))
    return F.log_softmax(logits, dim=-1).masked_fill(~mask, 0.0)


def nearest_neighbour_mask(distances: torch.Tensor, num_neighbours: int | None) -> torch.Tensor | None:
    """(N, N) bool mask of each row's `num_neighbours` nearest other samples (None: all of them)."""
    n = distances.shape[0]
    if num_neighbours is None or num_neighbours >= n - 1:
        return None
    eye = torch.eye(n, dtype=torch.bool, device=distances.device)
    nearest = distances.masked_fill(eye, float("inf")).topk(num_neighbours, dim=-1, largest=False).indices
    return torch.zeros_like(eye).scatter_(1, nearest, True)


def contextual_distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float,
    num_neighbours: int | None = None,
    gather: bool = True,
) -> torch.Tensor:
    """L_KD (see the module docstring): mean_i KL(P^T_i || P^S_i), with P_i(j) = softmax_j(-d(f_i, f_j) / tau) over
    the neighbours j != i of sample i (its `num_neighbours` nearest in teacher space, or all).

    Args:
        student: (N, D_s) student embeddings (the distillation token's), gradients flow into them.
        teacher: (N, D_t) teacher embeddings of the same samples (detached here).
        temperature: tau.
        num_neighbours: k, or None for every other sample of the batch.
        gather: under data parallelism (torch.distributed initialised), the neighbours are those of the *global*
            batch: every rank's rows are gathered first (the student's with gradient; `hf_sbir.losses.distributed`).
    Returns: scalar; 0 for a batch of fewer than 2 samples.
    """
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"student and teacher need the same samples; got {student.shape[0]} and {teacher.shape[0]} rows.")
    if gather:
        student, teacher = gather_with_grad(student), gather_no_grad(teacher.detach())
    if student.shape[0] < 2:
        return student.sum() * 0.0
    teacher_distances = pairwise_distances(teacher.detach().to(student.dtype))
    mask = neighbour_mask(student.shape[0], nearest_neighbour_mask(teacher_distances, num_neighbours), student.device)
    log_p_teacher = neighbour_log_distribution(teacher_distances, temperature, mask)
    log_p_student = neighbour_log_distribution(pairwise_distances(student), temperature, mask)
    p_teacher = log_p_teacher.exp() * mask
    return (p_teacher * (log_p_teacher - log_p_student)).sum(dim=-1).mean()


@dataclass
class FGSBIRLosses:
    """The terms of one training step (scalars). `total` is eq. 5 (+ lambda_KD L_KD)."""

    total: torch.Tensor
    cross_modal: torch.Tensor
    photo_intra: torch.Tensor
    sketch_intra: torch.Tensor
    distillation: torch.Tensor | None = None

    def as_floats(self) -> dict[str, float]:
        out = {
            "loss": float(self.total.detach()),
            "loss_cross_modal": float(self.cross_modal.detach()),
            "loss_photo_intra": float(self.photo_intra.detach()),
            "loss_sketch_intra": float(self.sketch_intra.detach()),
        }
        if self.distillation is not None:
            out["loss_distillation"] = float(self.distillation.detach())
        return out


def fg_sbir_loss(
    sketch: torch.Tensor,
    sketch_positive: torch.Tensor,
    sketch_negative: torch.Tensor,
    photo: torch.Tensor,
    photo_augmented: torch.Tensor,
    photo_negative: torch.Tensor,
    cross_modal_margin: float = 0.2,
    photo_margin: float = 0.2,
    sketch_margin: float = 0.2,
    photo_intra_weight: float = 1.0,
    sketch_intra_weight: float = 1.0,
    distillation: torch.Tensor | None = None,
    distillation_weight: float = 1.0,
) -> FGSBIRLosses:
    """Eq. 5: L = L_CM + lambda1 L_IM^photo + lambda2 L_IM^sketch (+ lambda_KD L_KD when `distillation` is given).

    Args (all (N, D) embeddings, row i of each belonging to training pair i):
        sketch: f_s, the query sketch of photo i.
        sketch_positive: f_s+, another sketch of photo i (or the same sketch when photo i has only one).
        sketch_negative: f_s-, a sketch of another photo.
        photo: f_p, photo i (the positive of eq. 1, the anchor of eq. 2).
        photo_augmented: f_p+, a structurally augmented view of photo i.
        photo_negative: f_p-, another photo (the negative of eqs. 1 and 2).
        distillation: an already computed L_KD (scalar), or None.
    """
    cross_modal = cross_modal_triplet_loss(sketch, photo, photo_negative, cross_modal_margin)
    photo_intra = photo_intra_modal_triplet_loss(photo, photo_augmented, photo_negative, photo_margin)
    sketch_intra = sketch_intra_modal_triplet_loss(sketch, sketch_positive, sketch_negative, sketch_margin)
    total = cross_modal + photo_intra_weight * photo_intra + sketch_intra_weight * sketch_intra
    if distillation is not None:
        total = total + distillation_weight * distillation
    return FGSBIRLosses(total, cross_modal, photo_intra, sketch_intra, distillation)


# The groups of one training batch, in the order the model sees them (one forward pass over all of them).
FG_BATCH_GROUPS = ("sketch", "sketch_positive", "sketch_negative", "photo", "photo_augmented", "photo_negative", "unlabelled")


class FGSBIRLoss(nn.Module):
    """Eq. 5 as a module that takes the model's output over the concatenated groups of a batch
    (`FG_BATCH_GROUPS` order; `sizes` gives each group's rows, "unlabelled" optional) and, with distillation,
    the teacher's embeddings of the "photo" (and "unlabelled") groups: L_KD sums (i) unlabelled photos,
    (ii) photos and (iii) sketches against the teacher's photos. Margins and weights come from `config`."""

    def __init__(self, config):
        super().__init__()
        self.config = config

    def forward(self, output, sizes: dict[str, int], teacher: dict[str, torch.Tensor] | None = None) -> FGSBIRLosses:
        cfg = self.config
        names = [name for name in FG_BATCH_GROUPS if name in sizes]
        embeddings = dict(zip(names, output.embeddings.split([sizes[n] for n in names])))
        distillation = None
        if teacher is not None:
            if output.distillation_embeddings is None:
                raise ValueError("Distillation needs a model with the distillation token.")
            student = dict(zip(names, output.distillation_embeddings.split([sizes[n] for n in names])))
            tau, k = cfg.distillation_temperature, cfg.distillation_neighbours
            distillation = contextual_distillation_loss(student["photo"], teacher["photo"], tau, k)  # (ii)
            distillation = distillation + contextual_distillation_loss(student["sketch"], teacher["photo"], tau, k)  # (iii)
            if "unlabelled" in teacher:  # (i)
                distillation = distillation + contextual_distillation_loss(student["unlabelled"], teacher["unlabelled"], tau, k)
        return fg_sbir_loss(
            embeddings["sketch"], embeddings["sketch_positive"], embeddings["sketch_negative"],
            embeddings["photo"], embeddings["photo_augmented"], embeddings["photo_negative"],
            cross_modal_margin=cfg.cross_modal_margin, photo_margin=cfg.photo_margin, sketch_margin=cfg.sketch_margin,
            photo_intra_weight=cfg.photo_intra_weight, sketch_intra_weight=cfg.sketch_intra_weight,
            distillation=distillation, distillation_weight=cfg.distillation_weight,
        )


__all__ = [
    "FG_BATCH_GROUPS",
    "FGSBIRLoss",
    "FGSBIRLosses",
    "contextual_distillation_loss",
    "cross_modal_triplet_loss",
    "euclidean_distance",
    "fg_sbir_loss",
    "nearest_neighbour_mask",
    "neighbour_log_distribution",
    "neighbour_mask",
    "pairwise_distances",
    "photo_intra_modal_triplet_loss",
    "sketch_intra_modal_triplet_loss",
    "triplet_loss",
]
