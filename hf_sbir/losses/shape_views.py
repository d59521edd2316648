"""Shape-views fine-tuning loss (arXiv 2306.08541), a small pure function.

The paper fine-tunes the whole encoder with a small learning rate on pairs of synthetic sketches of the
same view drawn in two styles (its NPR and Anime styles), with a contrastive cross-entropy: in a batch
of N views, the style-A drawing of view i must be more similar to the style-B drawing of view i than to
the style-B drawings of the other N - 1 views.

    L = -(1/N) sum_i log( exp(s_ii / tau) / sum_j exp(s_ij / tau) ),   s_ij = cos(z_i^A, z_j^B)

(the symmetric form averages this with the same term for B -> A). Equation numbering: the paper summary
in this repository (`shared/papers/zero-shot-3d-shape-sketch-views.md`) does not number the paper's
equations, so none is claimed here; this is its (only) training objective.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hf_sbir.losses.distributed import gather_with_grad


def contrastive_cross_entropy(
    embeds_a: torch.Tensor, embeds_b: torch.Tensor, temperature: float, symmetric: bool = True, gather: bool = True
) -> torch.Tensor:
    """Contrastive cross-entropy between two styles of the same views.

    Args:
        embeds_a: (N, D) features of the views drawn in style A (normalised here: similarities are cosines).
        embeds_b: (N, D) features of the same N views drawn in style B; row i of both is the same view.
        temperature: tau.
        symmetric: average the A->B and B->A cross-entropies (default); False gives A->B only.
        gather: under data parallelism (torch.distributed initialised), first gather every rank's rows with
            gradient, so the other views of the *global* batch are the negatives (`hf_sbir.losses.distributed`).
    Returns: scalar loss.
    """
    if embeds_a.shape != embeds_b.shape or embeds_a.dim() != 2:
        raise ValueError(f"embeds_a and embeds_b must both be (N, D); got {tuple(embeds_a.shape)} and {tuple(embeds_b.shape)}.")
    if gather:
        embeds_a, embeds_b = gather_with_grad(embeds_a), gather_with_grad(embeds_b)
    logits = F.normalize(embeds_a, dim=-1) @ F.normalize(embeds_b, dim=-1).T / temperature
    targets = torch.arange(logits.shape[0], device=logits.device)
    loss = F.cross_entropy(logits, targets)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, targets))
    return loss




class ShapeViewsLoss(nn.Module):
    """The contrastive objective as a module that takes the model's output: the first `num_first` embeddings
    are one style's drawings, the rest the same views in the other style (row i pairs with row i)."""

    def __init__(self, config, symmetric: bool = True):
        super().__init__()
        self.config = config
        self.symmetric = symmetric

    def forward(self, output, num_first: int) -> torch.Tensor:
        embeddings = output.embeddings
        return contrastive_cross_entropy(
            embeddings[:num_first], embeddings[num_first:], self.config.contrastive_temperature, self.symmetric
        )


__all__ = ["ShapeViewsLoss", "contrastive_cross_entropy"]
