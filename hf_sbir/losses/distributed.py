"""Cross-rank gathering for losses with in-batch negatives (data-parallel training).

Under data parallelism each process holds one slice of the global batch. A contrastive loss computed on
the local slice alone would see only `batch_size` negatives instead of the global batch's, so N
processes would train a different model from one process with the whole batch. As open_clip's
`gather_features` does, the losses gather the embeddings of every rank *with gradient*
(`torch.distributed.nn.functional.all_gather`): every rank then computes the same global loss, and the
gradient reaching rank r's own embeddings is the sum over ranks of d(loss)/d(its rows), i.e. N times
the one-process gradient. DDP averages parameter gradients over the N ranks, which divides that factor
out again: N processes x batch b get exactly the gradient of 1 process x batch N*b.

Losses that are a mean of per-sample terms (a class cross-entropy, a triplet with an explicitly drawn
negative, a per-sample distance) need no gathering: the mean over ranks of equal-sized local means is
the global mean, and DDP's averaging gives the one-process gradient as is.

Outside `torch.distributed` (or with one process) every function here is the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of processes of the default process group (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `tensor` along dim 0, in rank order; gradients flow back to each rank's slice.

    All ranks must pass tensors of the same shape (the training loop gives every rank an equal share)."""
    if world_size() == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor), dim=0)


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `tensor` along dim 0, in rank order, without gradient (labels, teacher features)."""
    if world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


__all__ = ["gather_no_grad", "gather_with_grad", "world_size"]
