"""Class-name embedding providers (offline): packaged MiniLM, word2vec files, a tiny local CLIP."""

import logging
import struct
import time

import numpy as np
import pytest
import torch

from hf_sbir.anchors import (
    CLIPTextEmbedder,
    ClassNameEmbedder,
    MiniLMEmbedder,
    UnknownClassNameError,
    Word2VecFileEmbedder,
    embedder_from_dict,
    get_class_name_embedder,
    normalize_class_name,
)
from hf_sbir.anchors import text as text_module

SMALL_VOCAB = [
    "dog",
    "kitten",
    "cat",
    "feline",
    "turtle",
    "tortoise",
    "ocean",
    "car",
    "sedan",
    "airplane",
    "jet",
    "piano",
]


@pytest.fixture(scope="module")
def minilm():
    return MiniLMEmbedder()


def test_normalize_class_name():
    assert normalize_class_name("sea_turtle") == "sea turtle"
    assert normalize_class_name("car_(sedan)") == "car (sedan)"
    assert normalize_class_name("  hot  air_balloon ") == "hot air balloon"


def test_minilm_embeddings(minilm):
    assert isinstance(minilm, ClassNameEmbedder)
    vectors = minilm.embed(["cat", "dog", "airplane", "sea_turtle", "sea turtle"])
    assert vectors.shape == (5, 384) and minilm.dim == 384
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(5), atol=1e-5)
    cat, dog, airplane = vectors[:3]
    assert cat @ dog > cat @ airplane + 0.1
    assert torch.allclose(vectors[3], vectors[4], atol=1e-6)  # names are normalised before embedding
    assert minilm.to_dict()["provider"] == "minilm"


def test_minilm_matches_sentence_transformers(minilm):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(minilm.model_path), device="cpu")
    expected = torch.from_numpy(reference.encode(["cat", "sea turtle"], normalize_embeddings=True))
    assert torch.allclose(minilm.embed(["cat", "sea_turtle"]), expected, atol=1e-5)


def test_minilm_neighbours_with_vocabulary_override(minilm):
    names = ["cat", "sea_turtle"]
    neighbours = minilm.neighbours(names, k=4, vocabulary=SMALL_VOCAB)
    assert neighbours.shape == (2, 4, 384)
    assert torch.allclose(neighbours[:, 0], minilm.embed(names), atol=1e-6)  # own vector first
    words = minilm.neighbour_words(names, k=4, vocabulary=SMALL_VOCAB)
    assert "cat" not in words[0] and set(words[0]) & {"kitten", "feline"}
    assert set(words[1][:2]) == {"turtle", "tortoise"}
    assert torch.allclose(neighbours[1, 1], minilm.embed([words[1][0]])[0], atol=1e-6)
    assert minilm.neighbours(names, k=1).shape == (2, 1, 384)


def test_minilm_candidate_vocabulary(minilm):
    words = minilm.candidate_vocabulary()
    assert len(words) > 20000 and words[0] == "the"
    assert all(w.isalpha() and w.isascii() and len(w) >= 3 for w in words)
    assert {"cat", "dog", "turtle"} <= set(words)


def test_minilm_vocabulary_cache(monkeypatch, tmp_path, minilm):
    monkeypatch.setenv("HF_SBIR_CACHE", str(tmp_path))
    embedder = MiniLMEmbedder(max_vocab=300)
    words, vectors = embedder.vocabulary_embeddings()
    assert len(words) == 300 and vectors.shape == (300, 384)
    assert len(list(tmp_path.glob("vocab-*.pt"))) == 1
    fresh = MiniLMEmbedder(max_vocab=300)
    encoded = []
    original = fresh._encode
    monkeypatch.setattr(fresh, "_encode", lambda texts: encoded.extend(texts) or original(texts))
    cached_words, cached = fresh.vocabulary_embeddings()
    assert cached_words == words and not encoded  # read from disk, nothing re-embedded
    assert torch.allclose(cached, vectors, atol=1e-3)  # stored in float16
    assert fresh.neighbours(["cat"], k=10).shape == (1, 10, 384)


# -- word2vec ----------------------------------------------------------------------------------------

W2V = {
    "cat": [1.0, 0.1, 0.0, 0.0],
    "kitten": [0.9, 0.2, 0.0, 0.1],
    "dog": [0.7, 0.6, 0.0, 0.0],
    "sea": [0.0, 0.0, 1.0, 0.2],
    "turtle": [0.1, 0.3, 0.2, 1.0],
    "car": [0.0, 1.0, 0.0, -0.5],
    "sedan": [0.1, 0.9, 0.0, -0.6],
    "airplane": [-1.0, 0.2, 0.3, 0.0],
}


def _write_text(path, vectors=W2V, header=True):
    lines = [f"{len(vectors)} 4"] if header else []
    lines += [word + " " + " ".join(f"{v:.6f}" for v in vec) for word, vec in vectors.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _write_binary(path, vectors=W2V):
    with open(path, "wb") as handle:
        handle.write(f"{len(vectors)} 4\n".encode())
        for word, vec in vectors.items():
            handle.write(word.encode() + b" " + struct.pack("<4f", *vec) + b"\n")
    return path


def test_word2vec_text_file(tmp_path):
    embedder = Word2VecFileEmbedder(_write_text(tmp_path / "vectors.txt"))
    assert isinstance(embedder, ClassNameEmbedder) and embedder.dim == 4 and not embedder.binary
    vectors = embedder.embed(["cat", "dog", "airplane"])
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(3))
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    # Multi-word names: mean of the unit word vectors, re-normalised.
    unit = {w: np.asarray(v) / np.linalg.norm(v) for w, v in W2V.items()}
    expected = unit["sea"] + unit["turtle"]
    assert torch.allclose(embedder.embed(["sea_turtle"])[0], torch.tensor(expected / np.linalg.norm(expected)).float())
    assert torch.allclose(embedder.embed(["car_(sedan)"])[0], embedder.embed(["car sedan"])[0])

    neighbours = embedder.neighbours(["cat", "car"], k=3)
    assert neighbours.shape == (2, 3, 4)
    assert torch.allclose(neighbours[:, 0], embedder.embed(["cat", "car"]))
    assert embedder.neighbour_words(["cat", "car"], k=3) == [["kitten", "dog"], ["sedan", "dog"]]
    assert torch.allclose(neighbours[0, 1], torch.tensor(unit["kitten"]).float())

    with pytest.raises(UnknownClassNameError, match="'hedgehog'") as info:
        embedder.embed(["cat", "hedgehog"])
    assert isinstance(info.value, ValueError) and "class" in str(info.value).lower()
    with pytest.raises(ValueError, match="'spiny'"):
        embedder.embed(["spiny_cat"])


def test_word2vec_binary_and_headerless_formats(tmp_path):
    text = Word2VecFileEmbedder(_write_text(tmp_path / "vectors.txt"))
    binary = Word2VecFileEmbedder(_write_binary(tmp_path / "vectors.bin"))
    glove = Word2VecFileEmbedder(_write_text(tmp_path / "glove.txt", header=False))
    assert binary.binary and binary.words == text.words == glove.words
    for other in (binary, glove):
        assert torch.allclose(other.embed(["sea_turtle", "cat"]), text.embed(["sea_turtle", "cat"]), atol=1e-6)
    limited = Word2VecFileEmbedder(tmp_path / "vectors.bin", limit=3)
    assert limited.words == ["cat", "kitten", "dog"]


def test_word2vec_to_dict_round_trip(tmp_path):
    embedder = Word2VecFileEmbedder(_write_text(tmp_path / "vectors.txt"))
    rebuilt = embedder_from_dict(embedder.to_dict())
    assert torch.equal(rebuilt.embed(["cat"]), embedder.embed(["cat"]))


# -- CLIP (a tiny random local model: the code path, not the quality) ---------------------------------


@pytest.fixture(scope="module")
def tiny_clip_folder(tmp_path_factory):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    letters = "abcdefghijklmnopqrstuvwxyz"
    for token in [*letters, *(c + "</w>" for c in letters)]:
        vocab[token] = len(vocab)
    merges = []
    for word in ["cat", "dog", "photo", "plane", "kitten", "car", "of", "turtle"]:
        current = word[0]
        for i, char in enumerate(word[1:], 1):
            right = char + "</w>" if i == len(word) - 1 else char
            if (current, right) not in merges:
                merges.append((current, right))
            current += right
            vocab.setdefault(current, len(vocab))
    folder = tmp_path_factory.mktemp("tiny_clip")
    CLIPTokenizer(vocab=vocab, merges=merges).save_pretrained(folder)
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        projection_dim=16,
        max_position_embeddings=32,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    CLIPTextModelWithProjection(config).save_pretrained(folder)
    return str(folder)


def test_clip_text_embedder_local(tiny_clip_folder):
    embedder = CLIPTextEmbedder(tiny_clip_folder, prompt_template="a photo of a {}")
    assert embedder.dim == 16
    vectors = embedder.embed(["cat", "sea_turtle"])
    assert vectors.shape == (2, 16) and torch.allclose(vectors.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert {"cat", "dog", "kitten", "photo", "plane", "turtle"} <= set(embedder.candidate_vocabulary())
    neighbours = embedder.neighbours(["cat"], k=3)
    assert neighbours.shape == (1, 3, 16)
    assert "cat" not in embedder.neighbour_words(["cat"], k=3)[0]
    assert embedder.to_dict()["prompt_template"] == "a photo of a {}"
    assert isinstance(get_class_name_embedder(tiny_clip_folder), CLIPTextEmbedder)


def test_clip_text_embedder_offline_fails_fast_and_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(OSError, match="openai/clip-vit-base-patch32.*minilm"):
        CLIPTextEmbedder()
    assert time.monotonic() - start < 5


# -- choosing a provider ------------------------------------------------------------------------------


def test_get_class_name_embedder_offline_default_is_packaged_minilm(monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level(logging.INFO, logger="hf_sbir"):
        embedder = get_class_name_embedder()
    assert isinstance(embedder, MiniLMEmbedder) and embedder.packaged
    records = [r for r in caplog.records if r.name == "hf_sbir"]
    assert len(records) == 1 and "minilm" in records[0].getMessage()


def test_get_class_name_embedder_user_choices(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert isinstance(get_class_name_embedder("minilm"), MiniLMEmbedder)
    assert isinstance(get_class_name_embedder(str(_write_text(tmp_path / "v.txt"))), Word2VecFileEmbedder)
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        get_class_name_embedder(str(tmp_path / "missing.bin"))
    with pytest.raises(OSError, match="someone/clip"):
        get_class_name_embedder("someone/clip")  # a hub id the user named: no silent fallback


def test_cache_dir_respects_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_SBIR_CACHE", str(tmp_path))
    assert text_module.cache_dir() == tmp_path
