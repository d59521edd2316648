"""Class-paired batches for sketch-photo contrastive training.

Sketch-an-Anchor's InfoNCE loss (eq. 1) pairs the i-th sketch of a batch with the i-th photo, and
uses the other photos of the batch as negatives. `PairedClassBatchSampler` yields such batches:
two index lists of equal length where position i of both lists is the same class.

Each batch is a pure function of `(seed, step)`, so a training run that saves `state_dict()` and
later calls `load_state_dict()` continues with exactly the batches it would have seen.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np


class PairedClassBatchSampler:
    """Yield `(sketch_indices, photo_indices)`, both of length `batch_size`, class-aligned by position.

    Classes are drawn uniformly among those with at least one sketch *and* one photo. Each batch uses
    `classes_per_batch` distinct classes (default: `min(batch_size, number of classes)`, i.e. every
    position a different class when possible, so no in-batch negative shares the anchor's class);
    the positions are shared among them as evenly as possible. Within a class, sketches and photos
    are drawn without replacement when the class has enough of them.

    Args:
        sketch_labels: class id of every sketch (index i = sketch dataset row i).
        photo_labels: class id of every photo (index j = photo dataset row j).
        batch_size: pairs per batch.
        seed: base seed; batch `k` uses `numpy.random.default_rng([seed, k])`.
        classes_per_batch: distinct classes per batch (`<= batch_size`); `None` as described above.
        num_batches: total length of the batch sequence; `None` iterates forever. A sampler resumed
            at step k yields batches k .. num_batches - 1.

    Example:
        ```python
        sketches, photos = split_by_domain(dataset["train"])
        sampler = PairedClassBatchSampler(sketches["label"], photos["label"], batch_size=64, seed=0)
        for sketch_idx, photo_idx in sampler:
            batch = collate(sketches[sketch_idx], photos[photo_idx])
        ```
    """

    def __init__(
        self,
        sketch_labels: Sequence[int],
        photo_labels: Sequence[int],
        batch_size: int,
        seed: int = 0,
        classes_per_batch: Optional[int] = None,
        num_batches: Optional[int] = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        sketch_labels = np.asarray(list(sketch_labels), dtype=np.int64)
        photo_labels = np.asarray(list(photo_labels), dtype=np.int64)
        # Sorted class ids, so the draw does not depend on row order.
        self.classes = np.intersect1d(np.unique(sketch_labels), np.unique(photo_labels))
        if self.classes.size == 0:
            raise ValueError("No class has both a sketch and a photo; cannot build paired batches")
        self._sketches = {int(c): np.flatnonzero(sketch_labels == c) for c in self.classes}
        self._photos = {int(c): np.flatnonzero(photo_labels == c) for c in self.classes}
        requested = classes_per_batch
        if classes_per_batch is None:
            classes_per_batch = min(batch_size, self.classes.size)
        if not 1 <= classes_per_batch <= min(batch_size, self.classes.size):
            raise ValueError(
                f"classes_per_batch must be in [1, min(batch_size={batch_size}, "
                f"classes with sketch and photo={self.classes.size})], got {classes_per_batch}"
            )
        self.batch_size = batch_size
        self.classes_per_batch = classes_per_batch
        self._default_classes_per_batch = requested is None
        self.num_batches = num_batches
        self.seed = int(seed)
        self.step = 0

    @classmethod
    def from_datasets(cls, sketches, photos, batch_size: int, label_column: str = "label", **kwargs):
        """Build from a sketch dataset and a photo dataset (e.g. the two outputs of `split_by_domain`)."""
        return cls(sketches[label_column], photos[label_column], batch_size, **kwargs)

    def batch(self, step: int, batch_size: int | None = None) -> tuple[list[int], list[int]]:
        """The batch at position `step` of the sequence (does not move the sampler).

        `batch_size` (default: the sampler's) draws a batch of another size from the same (seed, step): the
        training loop draws the *global* batch (batch_size x processes x accumulation steps) and gives each
        process its share, so the data of a run does not depend on how many processes share it. With the
        default `classes_per_batch`, that size also sets the number of classes (min(size, classes))."""
        size = self.batch_size if batch_size is None else int(batch_size)
        if size < 1:
            raise ValueError(f"batch_size must be >= 1, got {size}")
        per_batch = min(size, self.classes.size) if self._default_classes_per_batch else min(self.classes_per_batch, size)
        rng = np.random.default_rng([self.seed, step])
        chosen = rng.choice(self.classes, size=per_batch, replace=False)
        # Share the positions among the chosen classes as evenly as possible.
        counts = np.full(per_batch, size // per_batch)
        counts[: size % per_batch] += 1
        sketch_idx, photo_idx = [], []
        for c, n in zip(chosen, counts):
            for pool, out in ((self._sketches[int(c)], sketch_idx), (self._photos[int(c)], photo_idx)):
                out.extend(int(i) for i in rng.choice(pool, size=n, replace=n > pool.size))
        # Mix positions so that classes do not come in blocks; the same permutation keeps pairs aligned.
        order = rng.permutation(size)
        return [sketch_idx[i] for i in order], [photo_idx[i] for i in order]

    def __iter__(self) -> Iterator[tuple[list[int], list[int]]]:
        while self.num_batches is None or self.step < self.num_batches:
            step = self.step
            # Advance before yielding: a checkpoint taken after consuming batch k resumes at k + 1.
            self.step += 1
            yield self.batch(step)

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("PairedClassBatchSampler without num_batches is endless and has no len()")
        return self.num_batches

    def state_dict(self) -> dict:
        return {
            "seed": self.seed,
            "step": self.step,
            "batch_size": self.batch_size,
            "classes_per_batch": self.classes_per_batch,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore `step` and `seed`. `batch_size`/`classes_per_batch` must match, else the sequence would differ."""
        for key in ("batch_size", "classes_per_batch"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"state_dict has {key}={state[key]} but this sampler has {getattr(self, key)}")
        self.seed = int(state["seed"])
        self.step = int(state["step"])
