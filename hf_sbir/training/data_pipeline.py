"""The training loop's batches: the global batch of each step, split across processes and micro-steps,
decoded and transformed in background DataLoader workers.

Data-parallel semantics (what `accelerate launch` users expect): `batch_size` is per process and per
micro-step. The global batch of iteration t has `batch_size x num_processes x gradient_accumulation_steps`
items and is a pure function of (seed, t) (`TrainingMethod.batch_plan`); micro-step m of process r takes
share `m * num_processes + r` of it, a contiguous slice. Hence:

- a run's data does not depend on the number of processes (N x b sees the items of 1 x N*b);
- resume is exact: iteration t's batches are rebuilt from (seed, t), whatever ran before;
- gradient accumulation over k micro-steps of b items sees the items of one un-accumulated step of k*b
  (see `hf_sbir.training.trainer` for what that gives each loss).

Items are built in `num_workers` DataLoader worker processes (0: in the training process), in order, with
`prefetch` micro-batches per worker decoded ahead: the model does not wait for PIL.
"""

from __future__ import annotations

import time
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset


def share_of_plan(plan, index: int, count: int):
    """Share `index` (0-based) of `count` equal contiguous shares of a batch plan: a list, or a dict whose list
    values are each cut alike (other values, e.g. per-step settings, go to every share)."""
    if count == 1:
        return plan
    if isinstance(plan, dict):
        return {k: share_of_plan(v, index, count) if isinstance(v, (list, tuple)) else v for k, v in plan.items()}
    if len(plan) % count:
        raise ValueError(
            f"A global batch of {len(plan)} items does not split into {count} equal shares (processes x "
            "gradient_accumulation_steps). Choose batch_size (and the method's per-step counts) so that every "
            "process and micro-step gets the same number of items, e.g. a dataset large enough for the global batch."
        )
    size = len(plan) // count
    return plan[index * size : (index + 1) * size]


class MicroBatches(Dataset):
    """Item i: this process's micro-batch number i, counted from iteration `start` (k micro-batches per iteration).

    Args:
        method: the run's `TrainingMethod` (after `setup`).
        start, end: iterations [start, end) of this invocation.
        batch_size: items per process and micro-step.
        accumulation: micro-steps per iteration (`gradient_accumulation_steps`).
        num_processes, process_index: the data-parallel group and this process's rank.
    """

    def __init__(self, method, start: int, end: int, batch_size: int, accumulation: int = 1, num_processes: int = 1, process_index: int = 0):
        self.method = method
        self.start, self.end = int(start), int(end)
        self.batch_size = int(batch_size)
        self.accumulation = int(accumulation)
        self.num_processes = int(num_processes)
        self.process_index = int(process_index)
        self.shares = self.accumulation * self.num_processes
        from hf_sbir.training.method import TrainingMethod

        self._planned = type(method).batch_plan is not TrainingMethod.batch_plan
        if not self._planned and self.shares > 1:
            raise ValueError(
                f"Method {type(method).__name__} has no batch_plan(), so its batches cannot be shared among "
                f"{self.num_processes} processes x {self.accumulation} accumulation steps; run it on one process "
                "with gradient_accumulation_steps=1."
            )

    def __len__(self) -> int:
        return max(0, self.end - self.start) * self.accumulation

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        offset, micro = divmod(int(i), self.accumulation)
        step = self.start + offset
        if not self._planned:  # an old-style method: next_batch(step) is the whole (one-process) batch
            return self.method.next_batch(step)
        plan = self.method.batch_plan(step, self.batch_size * self.shares)
        share = share_of_plan(plan, micro * self.num_processes + self.process_index, self.shares)
        return self.method.make_batch(step, share)


def training_batches(
    method,
    start: int,
    end: int,
    batch_size: int,
    accumulation: int = 1,
    num_processes: int = 1,
    process_index: int = 0,
    num_workers: int = 0,
    prefetch: int = 2,
    pin_memory: bool = False,
) -> Iterator[tuple[int, list[dict[str, torch.Tensor]], float]]:
    """Yield `(iteration, [micro-batch, ...], wait_s)` for iterations start .. end - 1, built `num_workers` processes
    ahead; `wait_s` is how long the loop was blocked waiting for that iteration's batches (0 when they were ready)."""
    dataset = MicroBatches(method, start, end, batch_size, accumulation, num_processes, process_index)
    loader = DataLoader(
        dataset,
        batch_size=None,  # items are whole micro-batches already
        shuffle=False,  # in order: item i is micro-batch i
        num_workers=num_workers,
        prefetch_factor=prefetch if num_workers > 0 else None,
        pin_memory=pin_memory,
        # Its own generator: a DataLoader iterator otherwise draws its worker base seed from the global torch
        # RNG, which a resumed run has just restored, shifting every later dropout mask (resume would not
        # reproduce an uninterrupted run). Batches are a pure function of (seed, step) and need no seed here.
        generator=torch.Generator().manual_seed(start),
    )
    items = iter(loader)
    for iteration in range(start, end):
        began = time.perf_counter()
        micro_batches = [next(items) for _ in range(accumulation)]
        yield iteration, micro_batches, time.perf_counter() - began


__all__ = ["MicroBatches", "share_of_plan", "training_batches"]
