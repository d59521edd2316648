"""The Milvus vector-database backend (embedded milvus-lite) behind the GalleryIndex search API."""

import pytest
import torch
import torch.nn.functional as F

from hf_sbir.retrieval import GalleryIndex, recall_at_k

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from hf_sbir.retrieval.vector_db import VectorDBGallery  # noqa: E402


@pytest.fixture(scope="module")
def gallery():
    generator = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(40, 32, generator=generator), dim=1)
    labels = torch.randint(0, 40, (3000,), generator=generator)
    embeddings = F.normalize(centres[labels] + 0.2 * torch.randn(3000, 32, generator=generator), dim=1)
    metadata = [{"id": f"photo/{i}.jpg", "label": f"c{int(labels[i])}"} for i in range(3000)]
    return GalleryIndex(embeddings, metadata, "tiny/model", normalize=False)


@pytest.fixture(scope="module")
def db(gallery, tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("milvus") / "gallery.db")
    database = VectorDBGallery.from_gallery(gallery, uri)
    yield database
    database.close()


def test_search_matches_the_gallery_index(db, gallery):
    queries = gallery.embeddings[:50] + 0.05 * torch.randn(50, 32)
    scores, indices = db.search(queries, k=10)
    exact_scores, exact = gallery.search(queries, k=10, backend="torch")
    assert recall_at_k(indices, exact) >= 0.95
    hit = indices == exact
    assert torch.allclose(scores[hit], exact_scores[hit], atol=1e-4)  # cosine scores, as GalleryIndex
    assert db.results(indices[:2], scores[:2]) == gallery.results(indices[:2], scores[:2])


def test_a_closed_collection_reopens_by_uri(gallery, tmp_path):
    uri = str(tmp_path / "small.db")
    VectorDBGallery.from_gallery(gallery, uri, index_type="IVF_FLAT").close()
    again = VectorDBGallery(uri)
    assert len(again) == 3000 and again.dim == 32 and again.model_name_or_path == "tiny/model"
    assert torch.equal(again.search(gallery.embeddings[:3], k=1)[1][:, 0], torch.arange(3))
    again.close()


def test_add_appends_rows_with_following_indices(db):
    new = F.normalize(torch.randn(5, 32), dim=1)
    db.add(new, [{"id": f"new/{i}.jpg"} for i in range(5)])
    assert len(db) == 3005
    scores, indices = db.search(new, k=1)
    assert indices[:, 0].tolist() == list(range(3000, 3005)) and torch.allclose(scores[:, 0], torch.ones(5), atol=1e-4)
    assert db.results(indices)[0][0]["id"] == "new/0.jpg"


def test_bad_uses_are_named(db, gallery, tmp_path):
    with pytest.raises(ValueError, match="ending in .db"):
        VectorDBGallery(str(tmp_path / "gallery.sqlite"))
    with pytest.raises(ValueError, match="already has a collection"):
        VectorDBGallery.from_gallery(gallery, db.uri)
    with pytest.raises(ValueError, match=r"queries must be \(Q, 32\)"):
        db.search(torch.randn(2, 16))
    with pytest.raises(ValueError, match="has no collection 'other'"):
        VectorDBGallery.from_gallery(gallery, str(tmp_path / "x.db"), collection="first").close()
        VectorDBGallery(str(tmp_path / "x.db"), collection="other")


def test_default_search_ef_follows_the_collection_size_without_a_stats_call_per_search(gallery, tmp_path, monkeypatch):
    """Without `search_params` the Milvus `ef` is faiss HNSW's size-dependent default (`AnnConfig.ef_search`),
    for the size after this client's last `add`; the row count behind it is read once, not on every search
    (on milvus-lite the stats call costs about as much as a small search)."""
    from hf_sbir.retrieval import ann

    monkeypatch.setattr(ann, "default_ef_search", lambda count: count + 7)  # a stand-in that shows the count used
    uri = str(tmp_path / "ef.db")
    VectorDBGallery.from_gallery(GalleryIndex(gallery.embeddings[:100], normalize=False), uri).close()
    db = VectorDBGallery(uri)
    sent, stats = [], []
    search, get_stats = db.client.search, db.client.get_collection_stats
    monkeypatch.setattr(db.client, "search", lambda *a, **kw: sent.append(kw["search_params"]["params"]) or search(*a, **kw))
    monkeypatch.setattr(db.client, "get_collection_stats", lambda *a, **kw: stats.append(1) or get_stats(*a, **kw))
    db.search(gallery.embeddings[:2], k=3)
    db.search(gallery.embeddings[:2], k=3)
    assert [p["ef"] for p in sent] == [107, 107] and len(stats) == 1
    db.add(gallery.embeddings[100:150])
    db.search(gallery.embeddings[:2], k=3, search_params={"nprobe": 4})  # ef still the default beside nprobe
    db.search(gallery.embeddings[:2], k=3, search_params={"ef": 64})  # an explicit ef wins
    assert [p.get("ef") for p in sent[2:]] == [157, 64] and sent[2]["nprobe"] == 4
    db.close()
