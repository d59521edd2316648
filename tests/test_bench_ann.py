"""The ANN benchmark's data knobs (benchmarks/bench_ann.py): what BENCHMARKS.md says `--intrinsic-dim` does and
what the printed local intrinsic dimension measures."""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def _bench_ann():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_ann
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return bench_ann


def test_intrinsic_dim_keeps_each_clusters_noise_in_its_own_subspace_and_the_estimate_sees_it():
    bench = _bench_ann()
    generator = torch.Generator().manual_seed(0)
    dim, clusters, rank = 128, 4, 6
    centres = F.normalize(torch.randn(clusters, dim, generator=generator), dim=1)
    bases = torch.linalg.qr(torch.randn(clusters, dim, rank, generator=generator)).Q.mT
    flat = bench.clustered(4000, dim, centres, 1.0, generator, bases=bases)
    full = bench.clustered(4000, dim, centres, 1.0, generator)
    # Before normalisation a row is centre + noise in its cluster's subspace: the rows of one cluster span
    # at most rank + 1 directions (the normalisation only rescales them).
    nearest_centre = (flat @ centres.T).argmax(dim=1)
    one_cluster = flat[nearest_centre == 0]
    singular = torch.linalg.svdvals(one_cluster)
    assert (singular[rank + 1 :] < 1e-4 * singular[0]).all()
    assert torch.allclose(flat.norm(dim=1), torch.ones(len(flat)), atol=1e-5)
    # The Levina-Bickel estimate reads a few dimensions for the flat set and many for the full-rank one.
    flat_id, full_id = bench.local_intrinsic_dimension(flat), bench.local_intrinsic_dimension(full)
    assert flat_id < 2 * rank < full_id
