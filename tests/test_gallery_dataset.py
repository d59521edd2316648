"""A GalleryIndex round-trips through a Hugging Face `datasets.Dataset` (metadata + embeddings column)."""

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hf_sbir.retrieval import GalleryIndex

faiss = pytest.importorskip("faiss")


@pytest.fixture
def gallery():
    embeddings = F.normalize(torch.randn(300, 24), dim=1)
    metadata = [{"id": f"photo/{i % 7}/{i}.jpg", "label": str(i % 7), "score": i / 10, "split": None if i % 2 else "a"} for i in range(300)]
    return GalleryIndex(embeddings, metadata, "tiny/model", normalize=False)


def _assert_same(a: GalleryIndex, b: GalleryIndex):
    assert torch.equal(a.embeddings, b.embeddings)
    assert a.metadata == b.metadata
    assert a.model_name_or_path == b.model_name_or_path


def test_dataset_round_trip_through_save_to_disk(tmp_path, gallery):
    dataset = gallery.to_dataset()
    assert dataset.column_names == ["id", "label", "score", "split", "embeddings"]
    assert dataset.features["embeddings"] == datasets.List(datasets.Value("float32"), length=24)
    dataset.save_to_disk(str(tmp_path / "ds"))
    _assert_same(GalleryIndex.from_dataset(datasets.load_from_disk(str(tmp_path / "ds"))), gallery)


def test_parquet_load_dataset_round_trip(tmp_path, gallery):
    # What push_to_hub uploads (parquet shards) and load_dataset reads back, without the network.
    gallery.to_dataset().to_parquet(str(tmp_path / "train.parquet"))
    loaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "train.parquet"), split="train")
    back = GalleryIndex.from_dataset(loaded, model_name_or_path="tiny/model")
    _assert_same(back, gallery)


def test_datasets_faiss_search_agrees_with_the_gallery_index(gallery):
    dataset = gallery.to_dataset()
    dataset.add_faiss_index("embeddings", metric_type=faiss.METRIC_INNER_PRODUCT)
    query = gallery.embeddings[17].numpy()
    scores, examples = dataset.get_nearest_examples("embeddings", query, k=5)
    expected_scores, expected = gallery.search(query, k=5, backend="torch")
    assert examples["id"] == [gallery.metadata[i]["id"] for i in expected[0].tolist()]
    np.testing.assert_allclose(scores, expected_scores[0].numpy(), atol=1e-5)


def test_from_dataset_keeps_scalar_columns_and_names_class_labels():
    dataset = datasets.Dataset.from_dict(
        {"label": [0, 1], "vec": [[3.0, 4.0], [0.0, 2.0]], "tags": [["x"], []]},
        features=datasets.Features(
            {"label": datasets.ClassLabel(names=["cat", "dog"]), "vec": datasets.List(datasets.Value("float32")), "tags": datasets.List(datasets.Value("string"))}
        ),
    )
    index = GalleryIndex.from_dataset(dataset, embeddings_column="vec")
    assert index.metadata == [{"label": "cat"}, {"label": "dog"}]
    assert torch.allclose(index.embeddings, torch.tensor([[0.6, 0.8], [0.0, 1.0]]))


def test_bad_datasets_are_named(gallery):
    with pytest.raises(ValueError, match="no 'embeddings' column"):
        GalleryIndex.from_dataset(datasets.Dataset.from_dict({"a": [1]}))
    ragged = datasets.Dataset.from_dict({"embeddings": [[1.0, 2.0], [1.0]]})
    with pytest.raises(ValueError, match="equal-length float vectors"):
        GalleryIndex.from_dataset(ragged)
    mixed = GalleryIndex(torch.randn(2, 4), [{"id": 1}, {"id": "b"}])
    with pytest.raises(ValueError, match="metadata key 'id' mixes value types"):
        mixed.to_dataset()


def test_hub_paths_fail_offline_with_one_clear_line(monkeypatch, gallery):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="HF_HUB_OFFLINE is set") as error:
        gallery.push_to_hub("someone/gallery")
    assert "\n" not in str(error.value)
    with pytest.raises(OSError, match="could not load 'someone/no-such-gallery' on the Hugging Face Hub") as error:
        GalleryIndex.from_hub("someone/no-such-gallery")
    assert "\n" not in str(error.value)
