"""Build, extend and search a gallery index from the command line, on one process or many.

    python -m hf_sbir.index build --model M --gallery photos/ --output gallery_index
    python -m hf_sbir.index add --model M --gallery photos/ --output gallery_index     # only new photos
    python -m hf_sbir.index search --index gallery_index --sketch my_sketch.png -k 10
    torchrun --nproc_per_node 4 -m hf_sbir.index build ...        # or: accelerate launch -m hf_sbir.index build ...

``build`` embeds the gallery in shards of ``--shard_size`` photos. Each finished shard is written to
``<output>/.partial/`` at once, so a killed run started again with the same arguments skips the
finished shards. Under ``torchrun`` / ``accelerate launch`` process ``r`` of ``n`` embeds shards
``r, r + n, ...`` on its own device, and process 0 merges every shard into one `GalleryIndex`
(plus an approximate index with ``--ann``, or by default (HNSW) once the gallery reaches
`ANN_MIN_GALLERY` photos; ``--ann_param KEY=VALUE`` sets any `AnnConfig` field) and removes ``.partial``. ``add`` embeds only photos (by file path, or a
dataset's ``id`` column) that the index does not hold yet and appends them.

``--gallery``: a folder of images (recursive; label = top-level sub-folder) or a dataset folder
written by `datasets.Dataset.save_to_disk` (image column ``image``).

User errors (a missing folder, a model that does not load, shards from other arguments, ...)
print one ``error:`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from datetime import timedelta
from pathlib import Path

import torch

PARTIAL_DIR = ".partial"
PLAN_FILE = "plan.json"


class IndexCLIError(Exception):
    """A user error: printed as one line, exit status 2."""


# ------------------------------------------------------------------------------------ gallery
def _gallery_items(spec: str) -> tuple[object, list[dict]]:
    """``(images, metadata)`` of a ``--gallery`` (see the module docstring)."""
    from hf_sbir.retrieval import collect_items

    path = Path(spec)
    if not path.is_dir():
        raise IndexCLIError(f"--gallery {spec}: no such folder (pass a folder of images or a save_to_disk dataset folder)")
    if (path / "dataset_info.json").is_file() and (path / "state.json").is_file():
        import datasets

        try:
            dataset = datasets.load_from_disk(str(path))
        except Exception as error:
            raise IndexCLIError(f"--gallery {spec}: could not load the dataset: {error}") from error
        if isinstance(dataset, datasets.DatasetDict):
            raise IndexCLIError(f"--gallery {spec} holds splits {list(dataset)}; pass one split's folder")
        try:
            return collect_items(dataset)
        except ValueError as error:
            raise IndexCLIError(f"--gallery {spec}: {error}") from error
    try:
        return collect_items(path)
    except (ValueError, FileNotFoundError) as error:
        raise IndexCLIError(f"--gallery {spec}: {error}") from error


def _item_key(row: dict) -> str | None:
    """What identifies a photo across runs: its file path, or a dataset's ``id``."""
    key = row.get("path", row.get("id"))
    return None if key is None else str(key)


def _select(images, rows: list[int]):
    if isinstance(images, list):
        return [images[i] for i in rows]
    return images.select(rows)  # a datasets.Dataset


# --------------------------------------------------------------------------------- the plan
def _plan(args, metadata: list[dict], base_count: int) -> dict:
    keys = "\n".join(str(_item_key(m)) for m in metadata)
    return {
        "model": str(args.model),
        "gallery": str(Path(args.gallery).resolve()),
        "count": len(metadata),
        "shard_size": args.shard_size,
        "base_count": base_count,  # rows already in the index before this run (``add``)
        "items_sha1": hashlib.sha1(keys.encode("utf-8")).hexdigest(),
    }


def _check_or_write_plan(partial: Path, plan: dict, is_main: bool) -> None:
    path = partial / PLAN_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            old = None
        if old != plan:
            differ = sorted(k for k in plan if not isinstance(old, dict) or old.get(k) != plan[k])
            raise IndexCLIError(
                f"{partial} holds shards of an unfinished run with other arguments ({', '.join(differ)} differ); "
                "rerun with the same arguments to resume it, or delete that folder to start over"
            )
    elif is_main:
        partial.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(plan, indent=1), encoding="utf-8")
        os.replace(tmp, path)


def _shard_path(partial: Path, shard: int) -> Path:
    return partial / f"shard-{shard:06d}.safetensors"


def _shard_done(path: Path, rows: int) -> bool:
    if not path.is_file():
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.get_slice("embeddings").get_shape()[0] == rows
    except Exception:  # a shard cut short by a kill is simply embedded again
        return False


# ------------------------------------------------------------------------------- embedding
def _embed_shards(model, transform, images, count: int, partial: Path, args, rank: int, world: int, device) -> None:
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from hf_sbir.retrieval import embed_images

    num_shards = -(-count // args.shard_size)
    mine = [s for s in range(rank, num_shards, world)]
    todo = [s for s in mine if not _shard_done(_shard_path(partial, s), min(args.shard_size, count - s * args.shard_size))]
    rows_todo = sum(min(args.shard_size, count - s * args.shard_size) for s in todo)
    skipped = len(mine) - len(todo)
    desc = f"embedding gallery{f' (process {rank}/{world})' if world > 1 else ''}"
    if skipped:
        print(f"resuming: {skipped} of {len(mine)} shards already embedded", file=sys.stderr)
    with tqdm(total=rows_todo, desc=desc, unit="img", position=rank, disable=args.no_progress) as bar:
        for shard in todo:
            start = shard * args.shard_size
            stop = min(start + args.shard_size, count)
            embeddings = embed_images(
                model, _select(images, list(range(start, stop))), transform, "photo",
                batch_size=args.batch_size, device=device, progress=False,
            )
            path = _shard_path(partial, shard)
            tmp = path.with_suffix(".tmp")
            save_file({"embeddings": embeddings.contiguous()}, str(tmp))
            os.replace(tmp, path)  # a shard file exists only once it is complete
            bar.update(stop - start)
    if world > 1:
        print(f"process {rank}/{world}: embedded {rows_todo} photos in {len(todo)} shards", file=sys.stderr)


def _merge(partial: Path, count: int, shard_size: int) -> torch.Tensor:
    from safetensors.torch import load_file

    chunks = [load_file(str(_shard_path(partial, s)))["embeddings"] for s in range(-(-count // shard_size))]
    return torch.cat(chunks)


# --------------------------------------------------------------------------------- commands
def _load_model(name: str):
    from hf_sbir.evaluate import load_model_and_transform

    try:
        return load_model_and_transform(name)
    except (OSError, ValueError, KeyError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise IndexCLIError(f"--model {name}: could not load the model ({first})") from error


def _distributed_state():
    """accelerate's process state: rank / world size / device under torchrun or accelerate launch."""
    from accelerate import PartialState

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Processes wait for each other only at the merge; a resumed run can leave one process
        # far behind the others, so the rendezvous must outlast a whole gallery's embedding.
        # accelerate sets up gloo for CPU processes only when asked to (cpu=True).
        on_cpu = not (torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()))
        state = PartialState(cpu=on_cpu, timeout=timedelta(days=7))
        if state.num_processes != int(os.environ["WORLD_SIZE"]):  # every process would write every shard
            raise IndexCLIError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but accelerate set up {state.num_processes} process(es)")
        return state
    return PartialState()


def _model_id(name: str) -> str:
    return str(Path(name).resolve()) if Path(name).exists() else name


def build(args, add: bool = False) -> int:
    from hf_sbir.retrieval import ANN_MIN_GALLERY, AnnConfig, GalleryIndex
    from hf_sbir.retrieval.index import INDEX_FILE

    state = _distributed_state()
    output = Path(args.output)
    partial = output / PARTIAL_DIR
    existing = None
    if add:
        if not (output / INDEX_FILE).is_file():
            raise IndexCLIError(f"--output {output} has no index to add to; run `build` first")
        try:
            existing = GalleryIndex.load(output, mmap=False)
        except (OSError, ValueError) as error:
            raise IndexCLIError(f"--output {output}: {error}") from error
        if args.model is None:
            args.model = existing.model_name_or_path
        if not args.model:
            raise IndexCLIError(f"{output} does not record its model; pass --model")
        if existing.model_name_or_path and _model_id(args.model) != _model_id(existing.model_name_or_path):
            raise IndexCLIError(
                f"{output} was embedded with model {existing.model_name_or_path}, not {args.model}: new photos must "
                "use the same model (omit --model), or `build --overwrite` a new index"
            )
    elif (output / INDEX_FILE).is_file() and not (partial / PLAN_FILE).is_file() and not args.overwrite:
        raise IndexCLIError(
            f"--output {output} already holds an index; use `add` to embed only new photos, or --overwrite to rebuild it"
        )
    if args.shard_size < 1 or args.batch_size < 1:
        raise IndexCLIError("--shard_size and --batch_size must be positive")
    ann_params = _ann_params(args.ann_param, args.ann)  # checked before any photo is embedded

    images, metadata = _gallery_items(args.gallery)
    if existing is not None:
        known = {_item_key(m) for m in existing.metadata}
        if None in known or any(_item_key(m) is None for m in metadata):
            raise IndexCLIError("`add` matches photos by path or dataset `id`; this index or gallery has neither")
        new = [i for i, m in enumerate(metadata) if _item_key(m) not in known]
        if not new:
            if state.is_main_process:
                print(f"nothing to add: all {len(metadata)} photos of {args.gallery} are in {output}")
            return 0
        images, metadata = _select(images, new), [metadata[i] for i in new]

    plan = _plan(args, metadata, len(existing) if existing is not None else 0)
    _check_or_write_plan(partial, plan, state.is_main_process)
    state.wait_for_everyone()  # the plan exists before any shard is written
    model, transform = _load_model(args.model)
    model.to(state.device)
    _embed_shards(model, transform, images, len(metadata), partial, args, state.process_index, state.num_processes, state.device)
    state.wait_for_everyone()
    if not state.is_main_process:
        return 0

    embeddings = _merge(partial, len(metadata), args.shard_size)
    if existing is not None:
        embeddings = torch.cat([existing.embeddings, embeddings])
        metadata = existing.metadata + metadata
    if existing is not None and embeddings.shape[1] != existing.dim:
        raise IndexCLIError(f"the model embeds to {embeddings.shape[1]} dims but {output} holds {existing.dim}-d vectors")
    name = existing.model_name_or_path if existing is not None else _model_id(str(args.model))
    index = GalleryIndex(embeddings, metadata, name, normalize=False)
    ann, config = args.ann, None
    if ann == "auto" and existing is not None and existing.ann is not None:
        config = existing.ann.config.unresolved()  # rebuilt as it was built, sized for the grown gallery
        ann = config.kind
    elif ann == "auto":  # --ann_param asks for an approximate index whatever the size
        ann = AnnConfig().kind if len(index) >= ANN_MIN_GALLERY or ann_params else "none"
    if ann != "none":
        print(f"building the approximate index ({ann}) over {len(index)} photos", file=sys.stderr)
        try:
            index.build_ann(config or ann, **ann_params)
        except ValueError as error:  # e.g. pca_dim >= the model's width: only known once embedded
            raise IndexCLIError(
                f"--ann_param: {error}; the embedded shards are kept in {partial}: rerun with other --ann_param "
                "values to finish without embedding again"
            ) from error
    index.save(output)
    shutil.rmtree(partial)
    print(f"{'added' if add else 'indexed'} {len(metadata) - plan['base_count']} photos -> {output} ({len(index)} in all)")
    return 0


def search(args) -> int:
    from hf_sbir.retrieval import GalleryIndex, embed_images

    try:
        index = GalleryIndex.load(args.index)
    except (OSError, ValueError) as error:
        raise IndexCLIError(f"--index {args.index}: {error}") from error
    model_name = args.model or index.model_name_or_path
    if not model_name:
        raise IndexCLIError(f"{args.index} does not record its model; pass --model")
    if not Path(args.sketch).is_file():
        raise IndexCLIError(f"--sketch {args.sketch}: no such file")
    if args.k < 1:
        raise IndexCLIError("-k must be positive")
    model, transform = _load_model(model_name)
    from hf_sbir.retrieval import ImageLoadError

    try:
        query = embed_images(model, [args.sketch], transform, "sketch", progress=False)
    except (ImageLoadError, ValueError) as error:
        raise IndexCLIError(f"--sketch {args.sketch}: {error}") from error
    if query.shape[1] != index.dim:
        raise IndexCLIError(f"the model embeds to {query.shape[1]} dims but the index holds {index.dim}-d vectors")
    scores, indices = index.search(query, k=args.k)
    hits = index.results(indices, scores)[0]
    if args.json:
        print(json.dumps(hits, indent=1))
    else:
        for rank, hit in enumerate(hits, 1):
            print(f"{rank:3d}  {hit['score']:.4f}  {hit.get('label')}  {hit.get('path', hit.get('id', hit['index']))}")
    return 0


def _ann_params(items: list[str], kind: str) -> dict:
    """``--ann_param KEY=VALUE`` items as `AnnConfig` overrides, validated against it."""
    from hf_sbir.retrieval import AnnConfig

    params = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            params[key.strip()] = int(value)
        except ValueError:
            raise IndexCLIError(f"--ann_param {item!r}: expected KEY=INTEGER, e.g. pca_dim=128") from None
    if "kind" in params:
        raise IndexCLIError("--ann_param kind=...: choose the index with --ann")
    if params and kind == "none":
        raise IndexCLIError("--ann_param needs an approximate index; drop --ann none")
    try:
        AnnConfig.from_dict({"kind": AnnConfig().kind if kind in ("auto", "none") else kind, **params})
    except ValueError as error:
        raise IndexCLIError(f"--ann_param: {error}") from error
    return params


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hf_sbir.index", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("build", "embed a gallery into a new index"), ("add", "embed only new photos into an index")):
        p = commands.add_parser(name, help=help_)
        p.add_argument("--model", required=name == "build",
                       help="saved model folder or Hub id" + (" (default: the index's model)" if name == "add" else ""))
        p.add_argument("--gallery", required=True, help="folder of images, or a save_to_disk dataset folder")
        p.add_argument("--output", required=True, help="index folder")
        p.add_argument("--batch_size", type=int, default=32)
        p.add_argument("--shard_size", type=int, default=1024, help="photos per resumable shard")
        p.add_argument("--ann", default="auto", choices=["auto", "none", "hnsw", "ivf_flat", "ivf_pq"],
                       help="approximate index to build (auto: the default AnnConfig kind, HNSW, from ANN_MIN_GALLERY photos on; "
                       "`add` rebuilds the index's own kind and parameters)")
        p.add_argument("--ann_param", action="append", default=[], metavar="KEY=VALUE",
                       help="an AnnConfig field of the approximate index, repeatable: e.g. --ann_param pca_dim=128 "
                       "--ann_param m=48 (the 1M-photo setting of BENCHMARKS.md)")
        p.add_argument("--no_progress", action="store_true")
        if name == "build":
            p.add_argument("--overwrite", action="store_true", help="replace an existing index")
    p = commands.add_parser("search", help="top-k photos for one sketch")
    p.add_argument("--index", required=True)
    p.add_argument("--sketch", required=True, help="sketch image file")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--model", help="default: the model recorded in the index")
    p.add_argument("--json", action="store_true", help="print the hits as JSON")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "search":
            return search(args)
        return build(args, add=args.command == "add")
    except IndexCLIError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
