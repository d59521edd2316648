"""The ANN benchmark's data knobs (benchmarks/bench_ann.py): what BENCHMARKS.md says `--intrinsic-dim` does and
what the printed local intrinsic dimension measures."""

import pytest
import torch
import torch.nn.functional as F
from conftest import benchmark_module


def test_intrinsic_dim_keeps_each_clusters_noise_in_its_own_subspace_and_the_estimate_sees_it():
    bench = benchmark_module("bench_ann")
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


def test_fit_to_index_draws_clusters_with_the_real_galleries_between_and_within_class_covariance():
    """`--fit-to-index`: the synthetic set is a Gaussian mixture whose centres spread like the real class means
    and whose rows spread around them like the real rows around theirs (BENCHMARKS.md's fitted 1M set)."""
    bench = benchmark_module("bench_ann")
    generator = torch.Generator().manual_seed(0)
    dim, classes, per_class = 16, 12, 200
    # A "real" labelled gallery: class means along 3 directions, within-class scatter along 2 others.
    means = torch.zeros(classes, dim)
    means[:, :3] = torch.randn(classes, 3, generator=generator)
    scatter = torch.zeros(classes * per_class, dim)
    scatter[:, 3:5] = 0.1 * torch.randn(classes * per_class, 2, generator=generator)
    labels = [f"class{c}" for c in range(classes) for _ in range(per_class)]
    real = means.repeat_interleave(per_class, dim=0) + scatter
    centres, factor = bench.fitted_mixture(real, labels, 5000, generator)
    # Centres: the real class means' covariance (up to sampling noise), nothing outside the directions the
    # data spans (the class means' own scatter part reaches the 2 scatter directions, nothing more).
    between = torch.cov(means.T)
    assert torch.allclose(torch.cov(centres.T), between, atol=0.15 * between.abs().max())
    assert centres[:, 5:].abs().max() < 1e-5
    # Within a cluster: the pooled within-class covariance, factor.T @ factor.
    within = torch.cov(scatter.T) * (len(scatter) - 1) / (len(scatter) - classes)
    assert torch.allclose(factor.T @ factor, within, atol=1e-4)
    rows = bench.fitted_rows(1000, centres, factor, generator)
    assert rows.shape == (1000, dim) and torch.allclose(rows.norm(dim=1), torch.ones(1000), atol=1e-5)


def test_fit_to_index_runs_on_a_saved_gallery_of_any_width_and_refuses_one_without_labels(tmp_path, capsys):
    """The command BENCHMARKS.md prints, on a small saved gallery: the fitted set takes the gallery's width
    (here 24-d, not the default 512) and exact search scores recall 1.0 against itself; a gallery without
    labels is refused in one line that says what it needs."""
    import pytest

    from hf_sbir.retrieval import GalleryIndex

    bench = benchmark_module("bench_ann")
    generator = torch.Generator().manual_seed(0)
    means = torch.randn(6, 24, generator=generator).repeat_interleave(20, dim=0)
    rows = means + 0.3 * torch.randn(120, 24, generator=generator)
    GalleryIndex(rows, [{"label": f"c{i // 20}"} for i in range(120)]).save(tmp_path / "real")
    bench.main(["--size", "500", "--clusters", "12", "--fit-to-index", str(tmp_path / "real"), "--indexes", "torch",
                "--queries", "20", "--repeats", "1"])
    printed = capsys.readouterr().out
    assert "gallery 500 x 24 (12 clusters, a mixture fitted to" in printed
    assert "| torch | - | 0.0 | 0 | 0 |" in printed and printed.rstrip().endswith("| 1.000 |")
    GalleryIndex(rows).save(tmp_path / "unlabelled")
    with pytest.raises(SystemExit, match="every row needs a 'label'"):
        bench.main(["--size", "500", "--fit-to-index", str(tmp_path / "unlabelled"), "--indexes", "torch"])


def test_cached_set_is_written_in_place_and_a_projected_index_is_rebuilt_only_when_its_shape_changes(tmp_path, capsys):
    """`--cache` writes the gallery straight into its file (how a 10M set larger than RAM is made) and a
    rerun maps it; a `--pca-dim` index is cached under its own name, reused by a rerun with other search
    parameters, and reported with its projection and rerank."""
    import numpy as np

    bench = benchmark_module("bench_ann")
    common = ["--size", "3000", "--dim", "32", "--clusters", "30", "--queries", "20", "--repeats", "1",
              "--cache", str(tmp_path), "--indexes", "hnsw", "--pca-dim", "16", "--ef-searches", "16", "--no-mmap"]
    bench.main(common)
    first = capsys.readouterr().out
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    gallery = np.load(folder / "gallery.npy", mmap_mode="r")
    assert gallery.shape == (3000, 32) and np.allclose(np.linalg.norm(gallery, axis=1), 1, atol=1e-5)
    assert "generated in" in first and "hnsw: built in" in first
    assert "| hnsw | M=32, efC=40, efSearch=96, PCA 16, rerank 10x |" in first
    assert "of the variance in 16 directions" in first
    assert sorted(p.name for p in folder.glob("hnsw*.faiss")) == ["hnsw-m32-ef_construction40-pca_dim16-train_size3000-seed0.faiss"]
    bench.main(common + ["--rerank", "4"])
    second = capsys.readouterr().out
    assert "loaded from" in second and "hnsw: reusing" in second and "PCA 16, rerank 4x |" in second
    bench.main(common[:-7] + ["--indexes", "ivf_pq", "--pca-dim", "16", "--pq-bytes", "4", "--nprobes", "4", "--no-mmap"])
    assert "| ivf_pq | nlist=76, nprobe=16, 4 B x 6 bit, PCA 16, rerank 10x |" in capsys.readouterr().out


def test_variance_kept_is_the_share_of_the_leading_principal_directions():
    """What BENCHMARKS.md quotes to say whether `pca_dim` suits a gallery (the real one keeps 87.7 % in 128)."""
    bench = benchmark_module("bench_ann")
    generator = torch.Generator().manual_seed(0)
    scales = torch.tensor([3.0, 2.0, 1.0, 1.0])  # variances 9, 4, 1, 1 along random orthogonal axes
    axes = torch.linalg.qr(torch.randn(4, 4, generator=generator)).Q
    points = (torch.randn(40_000, 4, generator=generator) * scales) @ axes.T + 5.0  # the mean does not count
    assert abs(bench.variance_kept(points.numpy(), 1) - 9 / 15) < 0.01
    assert abs(bench.variance_kept(points.numpy(), 2) - 13 / 15) < 0.01
    assert bench.variance_kept(points.numpy(), 4) == pytest.approx(1.0)
