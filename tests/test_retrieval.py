"""Embedding, gallery index, search and end-to-end evaluation with a tiny fake model."""

import json
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_sbir.metrics import instance_metrics, retrieval_metrics
from hf_sbir.retrieval import (
    GalleryIndex,
    ImageLoadError,
    RetrievalEvaluation,
    build_gallery_index,
    embed_images,
    evaluate_retrieval,
    search_embeddings,
)

CLASSES = ["apple", "boat", "cat"]
COLOURS = {"apple": (220, 30, 30), "boat": (30, 30, 220), "cat": (30, 200, 30)}


class TinyEmbedder(torch.nn.Module):
    """A fixed random projection of a 3x8x8 image to 16-d; returns an object with `.embeddings`."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.proj = torch.nn.Linear(3 * 8 * 8, dim)
        self.calls = 0

    def forward(self, pixel_values):
        self.calls += pixel_values.shape[0]
        return SimpleNamespace(embeddings=self.proj(pixel_values.flatten(1)))


def transform(image, domain):
    array = np.asarray(image.convert("RGB").resize((8, 8)), dtype=np.float32) / 255.0
    pixels = torch.from_numpy(array).permute(2, 0, 1)
    return 1.0 - pixels if domain == "sketch" else pixels


def make_image(label: str, seed: int, size: int = 12) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.array(COLOURS[label], dtype=np.float32)
    pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return TinyEmbedder()


@pytest.fixture
def photo_folder(tmp_path):
    """photos/<class>/<n>.png, 4 per class, plus one nested file and one non-image file."""
    root = tmp_path / "photos"
    for c, label in enumerate(CLASSES):
        (root / label).mkdir(parents=True)
        for n in range(4):
            make_image(label, 100 * c + n).save(root / label / f"{n}.png")
    (root / "cat" / "more").mkdir()
    make_image("cat", 999).save(root / "cat" / "more" / "x.jpg")
    (root / "notes.txt").write_text("not an image")
    return root


def photo_dataset(n_per_class: int = 3, seed: int = 0) -> datasets.Dataset:
    images, labels, ids = [], [], []
    for c, label in enumerate(CLASSES):
        for n in range(n_per_class):
            images.append(make_image(label, seed + 10 * c + n))
            labels.append(c)
            ids.append(f"{label}-{n}")
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES), "id": datasets.Value("string")}
    )
    return datasets.Dataset.from_dict({"image": images, "label": labels, "id": ids}, features=features)


def sketch_dataset() -> datasets.Dataset:
    # Sketches of the same ids as photo_dataset(), with a *different* ClassLabel order.
    names = list(reversed(CLASSES))
    images, labels, pair_ids = [], [], []
    for c, label in enumerate(CLASSES):
        for n in range(3):
            images.append(make_image(label, 500 + 10 * c + n))
            labels.append(names.index(label))
            pair_ids.append(f"{label}-{n}")
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=names), "pair_id": datasets.Value("string")}
    )
    return datasets.Dataset.from_dict({"image": images, "label": labels, "pair_id": pair_ids}, features=features)


# ------------------------------------------------------------------------------------ embedding
def test_embed_images_sources_agree(model, tmp_path):
    images = [make_image(label, i) for i, label in enumerate(CLASSES * 3)]
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    dataset = datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))
    model.train()
    from_pil = embed_images(model, images, transform, "photo", batch_size=4, progress=False)
    from_paths = embed_images(model, [str(p) for p in paths], transform, "photo", batch_size=2, progress=False)
    from_dataset = embed_images(model, dataset, transform, "photo", batch_size=64, progress=False)
    assert from_pil.shape == (9, 16) and from_pil.dtype == torch.float32
    torch.testing.assert_close(from_pil, from_paths)
    torch.testing.assert_close(from_pil, from_dataset)
    torch.testing.assert_close(from_pil.norm(dim=1), torch.ones(9))
    assert model.training  # mode restored
    raw = embed_images(model, images, transform, "photo", normalize=False, progress=False)
    torch.testing.assert_close(torch.nn.functional.normalize(raw, dim=1), from_pil)


def test_embed_images_domain_column(model):
    images = [make_image("cat", i) for i in range(4)]
    dataset = datasets.Dataset.from_dict(
        {"image": images, "domain": ["sketch", "photo", "sketch", "photo"]},
        features=datasets.Features({"image": datasets.Image(), "domain": datasets.Value("string")}),
    )
    mixed = embed_images(model, dataset, transform, None, progress=False)
    sketches = embed_images(model, images, transform, "sketch", progress=False)
    photos = embed_images(model, images, transform, "photo", progress=False)
    torch.testing.assert_close(mixed[0::2], sketches[0::2])
    torch.testing.assert_close(mixed[1::2], photos[1::2])
    with pytest.raises(ValueError, match="domain"):
        embed_images(model, images, transform, None, progress=False)


def test_corrupt_image_error_names_path_and_index(model, tmp_path):
    good = tmp_path / "good.png"
    make_image("cat", 0).save(good)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(ImageLoadError, match=r"image 1 \(.*broken\.jpg\)"):
        embed_images(model, [str(good), str(bad)], transform, "photo", progress=False)
    dataset = datasets.Dataset.from_dict({"image": [str(good), str(good), str(bad)]}).cast_column(
        "image", datasets.Image()
    )
    with pytest.raises(ImageLoadError, match=r"dataset row 2 \(.*broken\.jpg\)"):
        embed_images(model, dataset, transform, "photo", progress=False)


def test_model_without_embeddings_is_a_clear_error():
    class Bad(torch.nn.Module):
        def forward(self, pixel_values):
            return SimpleNamespace(logits=pixel_values)

    with pytest.raises(TypeError, match="embeddings"):
        embed_images(Bad(), [make_image("cat", 0)], transform, "photo", progress=False)


# ---------------------------------------------------------------------------------------- index
def test_build_index_from_folder_and_round_trip(model, photo_folder, tmp_path):
    index = build_gallery_index(model, photo_folder, transform, batch_size=5, progress=False, model_name_or_path="tiny")
    assert len(index) == 13 and index.dim == 16
    assert index.column("label") == ["apple"] * 4 + ["boat"] * 4 + ["cat"] * 5
    assert index.metadata[-1]["id"] == "cat/more/x.jpg"  # recursive, sorted by relative path
    queries = embed_images(model, [make_image(label, 7) for label in CLASSES], transform, "photo", progress=False)

    saved = index.save(tmp_path / "idx")
    assert sorted(p.name for p in saved.iterdir()) == ["embeddings.safetensors", "index.json"]
    info = json.loads((saved / "index.json").read_text())
    assert {k: info[k] for k in ("format", "format_version", "dim", "count", "normalization", "model_name_or_path")} == {
        "format": "hf-sbir-gallery-index",
        "format_version": 1,
        "dim": 16,
        "count": 13,
        "normalization": "l2",
        "model_name_or_path": "tiny",
    }
    loaded = GalleryIndex.load(saved, expected_dim=16)
    assert torch.equal(loaded.embeddings, index.embeddings) and loaded.metadata == index.metadata
    for backend in ("torch", "faiss", "auto"):
        s0, i0 = index.search(queries, k=5, backend=backend)
        s1, i1 = loaded.search(queries, k=5, backend=backend)
        assert torch.equal(i0, i1) and torch.equal(s0, s1)
    # the nearest photo of each class-coloured query has that class
    _, top = loaded.search(queries, k=1)
    assert [loaded.metadata[i]["label"] for i in top[:, 0].tolist()] == CLASSES
    hits = loaded.results(top, loaded.search(queries, k=1)[0])
    assert hits[0][0]["label"] == "apple" and "score" in hits[0][0]


def test_round_trip_keeps_rows_and_metadata_paired_for_unsorted_ids(tmp_path):
    """Ids in no particular order (an index appended to, a dataset in its own order): after save + load,
    row i is still the embedding of item i, so a search names the item it found."""
    gen = torch.Generator().manual_seed(3)
    ids = ["zebra-7", "apple-10", "moth-2", "apple-9", "crab-1", 42, "apple-1"]
    meta = [{"id": i, "label": str(i).split("-")[0], "rank_hint": n} for n, i in enumerate(ids)]
    embeddings = torch.randn(len(ids), 8, generator=gen)
    index = GalleryIndex(embeddings, meta, "m")
    loaded = GalleryIndex.load(index.save(tmp_path / "idx"))
    assert loaded.column("id") == ids and loaded.metadata == index.metadata
    assert torch.equal(loaded.embeddings, index.embeddings)
    # Querying with each item's own embedding finds that item, by metadata.
    _, found = loaded.search(embeddings, k=1, backend="torch")
    assert [hits[0]["id"] for hits in loaded.results(found)] == ids


def test_build_index_from_dataset_uses_class_names(model):
    index = build_gallery_index(model, photo_dataset(), transform, progress=False)
    assert index.column("label") == ["apple"] * 3 + ["boat"] * 3 + ["cat"] * 3
    assert index.column("id")[:2] == ["apple-0", "apple-1"]


def test_torch_and_faiss_agree_and_chunking_is_exact():
    gen = torch.Generator().manual_seed(0)
    gallery = torch.nn.functional.normalize(torch.randn(1000, 32, generator=gen), dim=1)
    queries = torch.randn(50, 32, generator=gen)
    index = GalleryIndex(gallery)
    s_ref, i_ref = index.search(queries, k=10, backend="torch", chunk_size=10_000)  # one chunk
    for chunk in (7, 128, 999):
        s, i = index.search(queries, k=10, backend="torch", chunk_size=chunk)
        assert torch.equal(i, i_ref)
        torch.testing.assert_close(s, s_ref)
    s_f, i_f = index.search(queries, k=10, backend="faiss")
    assert torch.equal(i_f, i_ref)
    torch.testing.assert_close(s_f, s_ref, atol=1e-5, rtol=1e-5)
    # brute force reference
    full = torch.nn.functional.normalize(queries, dim=1) @ gallery.T
    torch.testing.assert_close(s_ref, full.topk(10, dim=1).values)
    # k larger than the gallery is clipped; a single 1-D query works
    s, i = search_embeddings(gallery[:4], queries[0], k=10, backend="torch")
    assert s.shape == (1, 4) and sorted(i[0].tolist()) == [0, 1, 2, 3]


def test_index_errors(tmp_path):
    index = GalleryIndex(torch.randn(5, 8), [{"id": i} for i in range(5)], "m")
    with pytest.raises(ValueError, match="metadata"):
        GalleryIndex(torch.randn(5, 8), [{}] * 4)
    with pytest.raises(ValueError, match=r"queries must be \(Q, 8\)"):
        index.search(torch.randn(2, 9))
    with pytest.raises(ValueError, match="backend"):
        index.search(torch.randn(2, 8), backend="annoy")
    with pytest.raises(FileNotFoundError, match="no gallery index folder"):
        GalleryIndex.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="index.json is missing"):
        GalleryIndex.load(tmp_path / "empty")

    path = index.save(tmp_path / "ok")
    with pytest.raises(ValueError, match="index has dim 8 but 16 was expected"):
        GalleryIndex.load(path, expected_dim=16)

    info = json.loads((path / "index.json").read_text())
    info["dim"] = 9
    (path / "index.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"shape \(5, 8\) but index.json says count=5, dim=9"):
        GalleryIndex.load(path)

    (path / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt .*index.json"):
        GalleryIndex.load(path)

    path = index.save(tmp_path / "ok2")
    (path / "embeddings.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="corrupt .*embeddings.safetensors"):
        GalleryIndex.load(path)

    with pytest.raises(ValueError, match="JSON-serialisable"):
        GalleryIndex(torch.randn(1, 8), [{"x": object()}]).save(tmp_path / "bad")


# ----------------------------------------------------------------------------------- evaluation
def test_evaluate_retrieval_matches_functional_metrics(model, photo_folder):
    sketches = sketch_dataset()
    result = evaluate_retrieval(
        model, sketches, photo_folder, transform, batch_size=4, map_ks=(5,), precision_ks=(3, 100), progress=False,
        chunk_size=2,
    )
    assert isinstance(result, RetrievalEvaluation)
    q = embed_images(model, sketches, transform, "sketch", progress=False)
    g = embed_images(model, str_paths(photo_folder), transform, "photo", progress=False)
    q_labels = [CLASSES[::-1][i] for i in sketches["label"]]  # names, as evaluate_retrieval compares them
    g_labels = ["apple"] * 4 + ["boat"] * 4 + ["cat"] * 5
    expected = retrieval_metrics(q @ g.T, q_labels, g_labels, map_ks=(5,), precision_ks=(3, 100))
    assert set(result.metrics) == {"map@all", "map@5", "p@3", "p@100"}
    for name, value in result.metrics.items():
        assert value == pytest.approx(expected[name], abs=1e-6)
    # pytest.approx compares flat collections only (pytest >= 9.2 refuses nested ones): row by row.
    assert len(result.per_class) == len(expected["per_class"])
    for got, want in zip(result.per_class, expected["per_class"]):
        assert got.keys() == want.keys()
        assert {k: v for k, v in got.items() if k != "label"} == pytest.approx({k: v for k, v in want.items() if k != "label"})
        assert got["label"] == want["label"]
    assert result.num_queries == 9 and result.num_gallery == 13
    table = result.as_table()
    assert "| map@all |" in table and "| label | num_queries |" in table and "| apple |" in table
    assert result.to_dict()["metrics"] == result.metrics


def str_paths(folder):
    from hf_sbir.retrieval import list_image_files

    return [str(p) for p in list_image_files(folder)]


def test_evaluate_retrieval_photo_to_photo_exclude_self(model):
    # Labels cut across the colours, so rankings are imperfect and the self-match matters.
    images = [make_image(CLASSES[i // 4], i) for i in range(12)]
    photos = datasets.Dataset.from_dict(
        {"image": images, "label": [i % 3 for i in range(12)]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )
    model.calls = 0
    result = evaluate_retrieval(
        model, photos, photos, transform, query_domain="photo", exclude_self=True, map_ks=(3,), precision_ks=(2,),
        progress=False,
    )
    assert model.calls == len(photos)  # the shared set is embedded once
    emb = embed_images(model, photos, transform, "photo", progress=False)
    sims, labels = emb @ emb.T, photos["label"]
    expected = retrieval_metrics(sims, labels, labels, map_ks=(3,), precision_ks=(2,), exclude_self=True)
    for name, value in result.metrics.items():
        assert value == pytest.approx(expected[name], abs=1e-6)
    # keeping each query in its own gallery (ranked first, always relevant) inflates every metric
    with_self = retrieval_metrics(sims, labels, labels, map_ks=(3,), precision_ks=(2,))
    assert with_self["map@all"] > result.metrics["map@all"] and with_self["p@2"] > result.metrics["p@2"]


def test_evaluate_retrieval_instance_metrics(model):
    sketches, photos = sketch_dataset(), photo_dataset()
    result = evaluate_retrieval(model, sketches, photos, transform, instance=True, progress=False)
    assert {"acc@1", "acc@5", "acc@10", "map@all", "map@200", "p@100", "p@200"} <= set(result.metrics)
    q = embed_images(model, sketches, transform, "sketch", progress=False)
    g = embed_images(model, photos, transform, "photo", progress=False)
    targets = [photos["id"].index(pid) for pid in sketches["pair_id"]]
    expected = instance_metrics(q @ g.T, targets)
    for name in ("acc@1", "acc@5", "acc@10"):
        assert result.metrics[name] == pytest.approx(expected[name])
    # a precomputed GalleryIndex works as the gallery, with the same answer
    index = build_gallery_index(model, photos, transform, progress=False)
    again = evaluate_retrieval(model, sketches, index, transform, instance=True, progress=False)
    assert again.metrics == pytest.approx(result.metrics)
    # a query whose pair is missing from the gallery is a clear error
    with pytest.raises(ValueError, match="no gallery item whose 'id'"):
        evaluate_retrieval(model, sketches, photos.select(range(8)), transform, instance=True, progress=False)


def test_evaluate_retrieval_needs_labels(model):
    images = [make_image("cat", i) for i in range(3)]
    with pytest.raises(ValueError, match="category metrics need"):
        evaluate_retrieval(model, images, images, transform, progress=False)


# ----------------------------------------------------------------------------------- the engine
def _random_embeddings(n, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=1)


@pytest.mark.parametrize("protocol", ["textbook", "sake", "zse_sbir", "sem_pcyc", "doodle2search", "dsn"])
def test_engine_equals_the_metrics_on_the_full_matrix_for_every_protocol(protocol):
    from hf_sbir.retrieval.evaluation import evaluate_embeddings

    q, g = _random_embeddings(23, seed=1), _random_embeddings(57, seed=2)
    q_labels, g_labels = [i % 4 for i in range(23)], [i % 5 for i in range(57)]  # class 4: no query; some R < k
    expected = retrieval_metrics(q @ g.T, q_labels, g_labels, map_ks=(10,), precision_ks=(5, 100), protocol=protocol)
    for chunk in (None, 3):
        result = evaluate_embeddings(q, g, q_labels, g_labels, protocol=protocol, map_ks=(10,), precision_ks=(5, 100), chunk_size=chunk)
        assert result.protocol["name"] == protocol
        for name, value in result.metrics.items():
            assert value == pytest.approx(expected[name], abs=1e-6), name
    assert "k = 100 exceeds the gallery (57 items): p@100 use the whole ranking (k is clipped to 57)." in result.notes


def test_engine_instance_level_per_class_and_layer_sweep():
    from hf_sbir.retrieval.evaluation import evaluate_embeddings, evaluate_layers

    q, g = _random_embeddings(12, seed=3), _random_embeddings(12, seed=4)
    target = torch.arange(12)
    classes = ["lamp"] * 6 + ["table"] * 6
    result = evaluate_embeddings(q, g, classes, target_index=target, instance_ks=(1, 5))
    assert result.metrics == pytest.approx(instance_metrics(q @ g.T, target, ks=(1, 5)))
    lamp = next(r for r in result.per_class if r["label"] == "lamp")
    assert lamp["num_queries"] == 6
    assert {k: lamp[k] for k in ("acc@1", "acc@5")} == pytest.approx(instance_metrics((q @ g.T)[:6], target[:6], ks=(1, 5)))
    # the sweep: layer 1 is the true match (identical embeddings) -> best layer; the model's layer is reported
    layers_q, layers_g = [q, g, None], [g, g, None]
    sweep = evaluate_layers(layers_q, layers_g, target, feature_layer=0, query_classes=classes)
    assert sweep.metrics == result.metrics and sweep.feature_layer == 0
    assert sorted(sweep.per_layer) == ["0", "1"] and sweep.per_layer["1"]["acc@1"] == 1.0 and sweep.best_layer == 1
    assert "| 1 * |" in sweep.as_table() and "| 0 (model) |" in sweep.as_table()


def test_zero_shot_evaluation_records_several_protocols_from_one_embedding_pass(model):
    from hf_sbir.retrieval.evaluation import TooFewClassesError, evaluate_zero_shot, format_metric_table

    images, labels, domains = [], [], []
    for c, name in enumerate(CLASSES):
        for n in range(4):
            for domain in ("sketch", "photo"):
                images.append(make_image(name, 100 * c + 10 * n + (domain == "photo")))
                labels.append(c)
                domains.append(domain)
    both = datasets.Dataset.from_dict(
        {"image": images, "label": labels, "domain": domains},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES), "domain": datasets.Value("string")}),
    )
    data = datasets.DatasetDict({"test": both})
    model.calls = 0
    result = evaluate_zero_shot(model, data, transform, progress=False, protocol=["textbook", "sake"])
    assert model.calls == len(both)  # every image embedded once for both protocols
    assert set(result.by_protocol) == {"textbook", "sake"} and result.metrics == result.by_protocol["textbook"]
    sake_only = evaluate_zero_shot(model, data, transform, progress=False, protocol="sake")
    assert sake_only.metrics == pytest.approx(result.by_protocol["sake"])
    assert {row["label"] for row in result.per_class} <= set(CLASSES)
    assert "| map@all |" in format_metric_table({"a": result, "b": result.to_dict()})
    one_class = datasets.DatasetDict({"test": both.filter(lambda r: r["label"] == 0)})
    with pytest.raises(TooFewClassesError, match="only 1 class"):
        evaluate_zero_shot(model, one_class, transform, progress=False)
