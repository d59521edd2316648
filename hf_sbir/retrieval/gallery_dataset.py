"""A gallery as a Hugging Face `datasets.Dataset`: metadata columns plus an ``embeddings`` column.

The dataset form is what the Hub and `datasets` tooling understand: ``add_faiss_index("embeddings")`` /
``get_nearest_examples`` search it, ``push_to_hub`` publishes it and ``load_dataset`` brings it back,
and `gallery_from_dataset` turns any such dataset (e.g. one that also holds the images) into a
`GalleryIndex`. The embedding model is recorded in the dataset's ``info.description`` as
``{"hf_sbir_gallery": {"model_name_or_path": ...}}`` (kept by ``save_to_disk``; after a Hub round
trip pass ``model_name_or_path=`` if it matters).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import datasets

    from hf_sbir.retrieval.index import GalleryIndex

__all__ = ["EMBEDDINGS_COLUMN", "gallery_to_dataset", "gallery_from_dataset", "push_gallery_to_hub", "load_gallery_from_hub"]

EMBEDDINGS_COLUMN = "embeddings"
_INFO_KEY = "hf_sbir_gallery"


def gallery_to_dataset(index: GalleryIndex, embeddings_column: str = EMBEDDINGS_COLUMN) -> datasets.Dataset:
    """One row per gallery item: a column per metadata key (None where an item lacks it) and
    ``embeddings_column`` holding the float32 vector (fixed length ``dim``)."""
    import datasets

    keys: dict[str, None] = {}
    for row in index.metadata:
        keys.update(dict.fromkeys(row))
    if embeddings_column in keys:
        raise ValueError(f"metadata already has a {embeddings_column!r} key; pass another embeddings_column=")
    columns = {key: [row.get(key) for row in index.metadata] for key in keys}
    vectors = index.embeddings.numpy()
    features = {}
    for key, values in columns.items():
        try:
            features[key] = datasets.Dataset.from_dict({key: values}).features[key]
        except Exception as error:  # Arrow refuses mixed types in one column (e.g. int and str)
            raise ValueError(
                f"metadata key {key!r} mixes value types ({sorted({type(v).__name__ for v in values})}); "
                "a dataset column needs one type: convert them first"
            ) from error
    features[embeddings_column] = datasets.List(datasets.Value("float32"), length=index.dim)
    # Arrow takes the (N, D) block through a fixed-size list without a Python list per row.
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    table = pa.table(
        {**{k: pa.array(v, type=features[k].pa_type) for k, v in columns.items()},
         embeddings_column: pa.FixedSizeListArray.from_arrays(flat, index.dim)}
    )
    info = datasets.DatasetInfo(
        description=json.dumps({_INFO_KEY: {"model_name_or_path": index.model_name_or_path}}),
        features=datasets.Features(features),
    )
    return datasets.Dataset(table, info=info)


def _model_from_info(dataset: datasets.Dataset) -> str | None:
    try:
        return json.loads(dataset.info.description or "")[_INFO_KEY]["model_name_or_path"]
    except (ValueError, KeyError, TypeError):
        return None


def gallery_from_dataset(
    dataset: datasets.Dataset,
    embeddings_column: str = EMBEDDINGS_COLUMN,
    *,
    model_name_or_path: str | None = None,
    normalize: bool | None = None,
) -> GalleryIndex:
    """A `GalleryIndex` of ``dataset``: vectors from ``embeddings_column``, metadata from every
    scalar column (`ClassLabel` values as their names); image/audio and nested columns are left out.
    ``normalize=None`` L2-normalises the vectors only if they are not unit-norm already, so a
    `gallery_to_dataset` round trip gives back the exact same floats.

    Raises:
        ValueError: no such column, or rows of different lengths / empty rows.
    """
    import datasets

    from hf_sbir.retrieval.index import GalleryIndex

    if isinstance(dataset, datasets.DatasetDict):
        raise ValueError(f"pass one split of the DatasetDict (splits: {list(dataset)}), e.g. dataset['train']")
    if embeddings_column not in dataset.column_names:
        raise ValueError(
            f"the dataset has no {embeddings_column!r} column (columns: {dataset.column_names}); pass embeddings_column="
        )
    try:
        vectors = np.asarray(dataset.with_format("numpy")[embeddings_column], dtype=np.float32)
    except (ValueError, TypeError) as error:
        raise ValueError(f"column {embeddings_column!r} must hold equal-length float vectors: {error}") from error
    if vectors.ndim != 2:
        raise ValueError(f"column {embeddings_column!r} must hold equal-length float vectors, got shape {vectors.shape}")
    if normalize is None:
        normalize = bool(np.abs(np.linalg.norm(vectors, axis=1) - 1).max(initial=0) > 1e-4)
    scalar = [
        name
        for name, feature in dataset.features.items()
        if name != embeddings_column and isinstance(feature, (datasets.Value, datasets.ClassLabel))
    ]
    table = dataset.select_columns(scalar).to_dict() if scalar else {}
    for name in scalar:
        feature = dataset.features[name]
        if isinstance(feature, datasets.ClassLabel):
            table[name] = [None if v is None or v < 0 else feature.int2str(v) for v in table[name]]
    metadata = [{name: table[name][i] for name in scalar} for i in range(len(dataset))]
    return GalleryIndex(
        vectors, metadata, model_name_or_path or _model_from_info(dataset), normalize=normalize
    )


def _hub_error(action: str, repo_id: str, error: Exception) -> OSError:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return OSError(
        f"could not {action} {repo_id!r} on the Hugging Face Hub ({type(error).__name__}: {first}); "
        "check the network, HF_HUB_OFFLINE and your token (`hf auth login`), or save_to_disk() instead"
    )


def push_gallery_to_hub(index: GalleryIndex, repo_id: str, **kwargs: Any):
    """``gallery_to_dataset(index).push_to_hub(repo_id, **kwargs)``, with one clear error offline."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise OSError(f"cannot push {repo_id!r}: HF_HUB_OFFLINE is set; unset it (and log in) to publish the gallery")
    dataset = gallery_to_dataset(index)
    try:
        return dataset.push_to_hub(repo_id, **kwargs)
    except Exception as error:  # network, auth and HTTP errors come from several libraries
        raise _hub_error("push to", repo_id, error) from error


def load_gallery_from_hub(repo_id: str, split: str = "train", **kwargs: Any) -> GalleryIndex:
    """``gallery_from_dataset(load_dataset(repo_id, split=split, **kwargs))`` with one clear error offline."""
    import datasets

    try:
        dataset = datasets.load_dataset(repo_id, split=split, **kwargs)
    except (ConnectionError, OSError, FileNotFoundError, ValueError) as error:
        raise _hub_error("load", repo_id, error) from error
    return gallery_from_dataset(dataset)
