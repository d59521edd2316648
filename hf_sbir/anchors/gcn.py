"""The GCN that adapts the Semantic Anchors (Sketch-an-Anchor §3.5, eq. 5, Fig. 3).

Word anchors and visual anchors become the nodes of one graph: each embedding's fully connected
graph weighted by its cosine similarities (eq. 2), the two joined by an edge between the word node
and the visual node of the same class, weighted like a self-connection. The adjacency is
softmax-normalised row by row (over existing edges only) and the layers follow Kipf & Welling:
V^{l+1} = Â V^l W^l. The output nodes are the Adapted Word / Visual Anchors.

This file is bundled into saved model folders (see hf_sbir/modeling_utils.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class AdaptedAnchors:
    """Adapted anchors, L2-normalised, each `(num_classes, projection_dim)` or None when that kind is off."""

    word: torch.Tensor | None = None
    visual: torch.Tensor | None = None

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in (("word", self.word), ("visual", self.visual)) if v is not None}


def unified_adjacency(
    word_anchors: torch.Tensor | None, visual_anchors: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    """Row-softmax-normalised adjacency Â^{w+v} of the unified graph.

    Args:
        word_anchors: (C, Dw) or None; visual_anchors: (C, Dv) or None (at least one given).
        temperature: softmax temperature of the edge weights (cosine similarities in [-1, 1]).
    Returns: (K*C, K*C) with K the number of anchor kinds given; word nodes first.
    """
    blocks = [F.normalize(a, dim=-1) for a in (word_anchors, visual_anchors) if a is not None]
    if not blocks:
        raise ValueError("unified_adjacency needs word anchors, visual anchors, or both.")
    sims = [b @ b.T for b in blocks]
    num_classes = sims[0].shape[0]
    size = num_classes * len(sims)
    logits = torch.full((size, size), float("-inf"), device=sims[0].device, dtype=sims[0].dtype)
    for k, sim in enumerate(sims):
        logits[k * num_classes : (k + 1) * num_classes, k * num_classes : (k + 1) * num_classes] = sim
    if len(sims) == 2:
        # Same-class word<->visual edges, weighted like the self-connection of the node they leave.
        idx = torch.arange(num_classes, device=logits.device)
        logits[idx, idx + num_classes] = sims[0].diagonal()
        logits[idx + num_classes, idx] = sims[1].diagonal()
    return torch.softmax(logits / temperature, dim=-1)


class AnchorGCN(nn.Module):
    """Projects word/visual anchors into the embedding space and refines them with a GCN.

    Args:
        word_dim, visual_dim: input anchor sizes; hidden_size: GCN width; output_dim: embedding size;
        num_layers: GCN layers (0 = linear projection only, the ablations without GCN);
        temperature: adjacency softmax temperature.
    """

    def __init__(self, word_dim: int, visual_dim: int, hidden_size: int, output_dim: int, num_layers: int, temperature: float):
        super().__init__()
        first = hidden_size if num_layers > 0 else output_dim
        # Word and visual anchors live in different spaces: one input projection each.
        self.word_in = nn.Linear(word_dim, first)
        self.visual_in = nn.Linear(visual_dim, first)
        sizes = [hidden_size] * num_layers + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(sizes[i], sizes[i + 1], bias=False) for i in range(num_layers))
        self.temperature = temperature

    def forward(self, word_anchors: torch.Tensor | None, visual_anchors: torch.Tensor | None) -> AdaptedAnchors:
        """word_anchors (C, Dw) or None, visual_anchors (C, Dv) or None -> AdaptedAnchors of (C, output_dim)."""
        nodes = []
        if word_anchors is not None:
            nodes.append(self.word_in(word_anchors))
        if visual_anchors is not None:
            nodes.append(self.visual_in(visual_anchors))
        if not nodes:
            return AdaptedAnchors()
        hidden = torch.cat(nodes, dim=0)
        if self.layers:
            adjacency = unified_adjacency(word_anchors, visual_anchors, self.temperature)
            for i, layer in enumerate(self.layers):
                hidden = adjacency @ layer(hidden)
                if i < len(self.layers) - 1:
                    hidden = F.relu(hidden)
        hidden = F.normalize(hidden, dim=-1)
        num_classes = hidden.shape[0] // len(nodes)
        parts = list(hidden.split(num_classes, dim=0))
        word = parts.pop(0) if word_anchors is not None else None
        visual = parts.pop(0) if visual_anchors is not None else None
        return AdaptedAnchors(word=word, visual=visual)
