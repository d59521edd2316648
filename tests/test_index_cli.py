"""`python -m hf_sbir.index`: sharded, resumable, incremental and multi-process gallery embedding; search."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image, ImageDraw

from conftest import REPO_ROOT, tiny_sketch_an_anchor_config
from hf_sbir import index as cli
from hf_sbir.retrieval import GalleryIndex, build_gallery_index


def _photo(path, i):
    img = Image.new("RGB", (40, 36), (250 - 9 * i, 240 - 5 * i, 230))
    ImageDraw.Draw(img).ellipse((3 + i % 7, 4, 34 - i % 5, 30), fill=(30 * (i % 8), 200 - 10 * i, 90))
    img.save(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A saved tiny model and a folder of 10 generated photos in 2 classes (+ 3 extra photos elsewhere)."""
    from hf_sbir import SketchAnAnchorModel
    from hf_sbir.data import SbirImageTransform

    root = tmp_path_factory.mktemp("index_cli")
    torch.manual_seed(0)
    SketchAnAnchorModel(tiny_sketch_an_anchor_config()).save_pretrained(root / "model")
    SbirImageTransform(image_size=32, empty_sketch="keep").save_pretrained(root / "model")
    for i in range(10):
        (root / "photos" / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        _photo(root / "photos" / f"class{i % 2}" / f"{i:02d}.png", i)
    (root / "extra").mkdir()
    for i in range(10, 13):
        _photo(root / "extra" / f"{i:02d}.png", i)
    sketch = Image.new("L", (48, 48), 255)
    ImageDraw.Draw(sketch).ellipse((8, 8, 40, 40), outline=0, width=3)
    sketch.save(root / "sketch.png")
    return root


@pytest.fixture(scope="module")
def reference(setup):
    """The gallery embedded in one go by the library (what every CLI path must reproduce)."""
    model, transform = cli._load_model(str(setup / "model"))
    return build_gallery_index(model, setup / "photos", transform, batch_size=4, progress=False)


def _build(setup, output, *extra, command="build"):
    return cli.main([command, "--model", str(setup / "model"), "--gallery", str(setup / "photos"),
                     "--output", str(output), "--shard_size", "3", "--batch_size", "2", "--no_progress", *extra])


def _count_embedded(monkeypatch):
    """Record how many photos each embedding call gets; optionally die after N calls (a kill)."""
    import hf_sbir.retrieval as retrieval

    calls, real = [], retrieval.embed_images

    def counting(model, images, *args, **kwargs):
        if counting.die_after is not None and len(calls) == counting.die_after:
            raise KeyboardInterrupt  # what a kill looks like from inside: the run stops mid-way
        calls.append(len(images))
        return real(model, images, *args, **kwargs)

    counting.die_after = None
    monkeypatch.setattr(retrieval, "embed_images", counting)
    return calls, counting


def _assert_same_gallery(a: GalleryIndex, b: GalleryIndex):
    assert [m["path"] for m in a.metadata] == [m["path"] for m in b.metadata]
    assert torch.allclose(a.embeddings, b.embeddings, atol=1e-5)


def test_build_matches_the_library_and_search_prints_top_k(setup, reference, tmp_path, capsys):
    assert _build(setup, tmp_path / "idx") == 0
    index = GalleryIndex.load(tmp_path / "idx")
    _assert_same_gallery(index, reference)
    assert not (tmp_path / "idx" / ".partial").exists()
    capsys.readouterr()
    assert cli.main(["search", "--index", str(tmp_path / "idx"), "--sketch", str(setup / "sketch.png"), "-k", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(str(setup / "photos") in line for line in lines)


def test_a_killed_build_resumes_without_redoing_finished_shards(setup, reference, tmp_path, monkeypatch):
    calls, counting = _count_embedded(monkeypatch)
    counting.die_after = 2  # 10 photos in shards of 3: the run dies after 2 of 4 shards
    with pytest.raises(KeyboardInterrupt):
        _build(setup, tmp_path / "idx")
    assert calls == [3, 3] and len(list((tmp_path / "idx" / ".partial").glob("shard-*.safetensors"))) == 2
    counting.die_after = None
    assert _build(setup, tmp_path / "idx") == 0
    assert calls == [3, 3, 3, 1]  # only the two unfinished shards were embedded again
    _assert_same_gallery(GalleryIndex.load(tmp_path / "idx"), reference)


def test_add_embeds_only_new_photos(setup, reference, tmp_path, monkeypatch):
    gallery = tmp_path / "photos"
    shutil.copytree(setup / "photos", gallery)
    (gallery / "class0" / "08.png").unlink()  # built without 08 and the 3 extra photos
    assert cli.main(["build", "--model", str(setup / "model"), "--gallery", str(gallery), "--output", str(tmp_path / "idx"), "--no_progress"]) == 0
    before = GalleryIndex.load(tmp_path / "idx")
    shutil.copy(setup / "photos" / "class0" / "08.png", gallery / "class0" / "08.png")
    for name in ("10.png", "11.png", "12.png"):
        shutil.copy(setup / "extra" / name, gallery / "class1" / name)
    calls, _ = _count_embedded(monkeypatch)
    assert cli.main(["add", "--gallery", str(gallery), "--output", str(tmp_path / "idx"), "--no_progress"]) == 0
    assert sum(calls) == 4
    after = GalleryIndex.load(tmp_path / "idx")
    assert len(after) == 13 and torch.equal(after.embeddings[:9], before.embeddings)
    row = [m["id"] for m in after.metadata].index("class0/08.png")
    ref_row = [m["id"] for m in reference.metadata].index("class0/08.png")
    assert torch.allclose(after.embeddings[row], reference.embeddings[ref_row], atol=1e-5)
    calls.clear()
    assert cli.main(["add", "--gallery", str(gallery), "--output", str(tmp_path / "idx"), "--no_progress"]) == 0
    assert calls == []


def test_approximate_index_parameters_are_built_kept_by_add_and_a_bad_one_loses_no_embedding(setup, tmp_path, monkeypatch):
    """`--ann_param` reaches the built index (the 1M-photo recipe is a projected, denser graph); `add` rebuilds
    the index with the same parameters; a value only wrong for this model's width fails after embedding in
    one line, and a rerun with a good value finishes without embedding a photo again."""
    gallery = tmp_path / "photos"
    shutil.copytree(setup / "photos", gallery)
    calls, _ = _count_embedded(monkeypatch)
    width = cli._load_model(str(setup / "model"))[0].config.projection_dim
    argv = ["build", "--model", str(setup / "model"), "--gallery", str(gallery), "--output", str(tmp_path / "idx"),
            "--no_progress", "--shard_size", "4", "--ann_param", "m=12"]  # --ann auto: a parameter asks for HNSW
    assert cli.main(argv + ["--ann_param", f"pca_dim={width}"]) == 2  # not smaller than the embeddings
    assert sum(calls) == 10 and (tmp_path / "idx" / ".partial").is_dir()
    assert cli.main(argv + ["--ann_param", f"pca_dim={width // 2}"]) == 0
    assert sum(calls) == 10  # the shards of the failed run were reused
    built = GalleryIndex.load(tmp_path / "idx").ann.config
    assert (built.kind, built.m, built.pca_dim) == ("hnsw", 12, width // 2)
    for name in ("10.png", "11.png"):
        shutil.copy(setup / "extra" / name, gallery / "class1" / name)
    assert cli.main(["add", "--gallery", str(gallery), "--output", str(tmp_path / "idx"), "--no_progress"]) == 0
    grown = GalleryIndex.load(tmp_path / "idx")
    assert len(grown) == 12 and grown.ann.count == 12
    assert (grown.ann.config.kind, grown.ann.config.m, grown.ann.config.pca_dim) == ("hnsw", 12, width // 2)


@pytest.mark.slow
def test_torchrun_two_processes_embed_their_shards_and_merge_one_index(setup, reference, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "hf_sbir.index", "build",
               "--model", str(setup / "model"), "--gallery", str(setup / "photos"), "--output", str(tmp_path / "idx"),
               "--shard_size", "2", "--batch_size", "2", "--no_progress"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # 10 photos in shards of 2: process 0 embeds shards 0, 2, 4 and process 1 shards 1, 3.
    assert "process 0/2: embedded 6 photos in 3 shards" in result.stderr
    assert "process 1/2: embedded 4 photos in 2 shards" in result.stderr
    _assert_same_gallery(GalleryIndex.load(tmp_path / "idx"), reference)


def test_user_errors_are_one_line_and_exit_2(setup, tmp_path, capsys):
    def fails(argv, message):
        capsys.readouterr()
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and "\n" not in err and "Traceback" not in err

    model, photos = str(setup / "model"), str(setup / "photos")
    fails(["build", "--model", model, "--gallery", str(tmp_path / "nope"), "--output", str(tmp_path / "i")], "no such folder")
    fails(["build", "--model", str(tmp_path), "--gallery", photos, "--output", str(tmp_path / "i")], "could not load the model")
    assert _build(setup, tmp_path / "idx") == 0
    fails(["build", "--model", model, "--gallery", photos, "--output", str(tmp_path / "idx")], "already holds an index")
    fails(["add", "--model", str(tmp_path / "other"), "--gallery", photos, "--output", str(tmp_path / "idx")], "was embedded with model")
    (tmp_path / "half" / ".partial").mkdir(parents=True)
    (tmp_path / "half" / ".partial" / "plan.json").write_text('{"shard_size": 7}')
    fails(["build", "--model", model, "--gallery", photos, "--output", str(tmp_path / "half")], "unfinished run with other arguments")
    fails(["search", "--index", str(tmp_path / "idx"), "--sketch", str(tmp_path / "none.png")], "no such file")
    fails(["search", "--index", str(tmp_path / "nope"), "--sketch", str(setup / "sketch.png")], "no gallery index folder")
    fresh = ["build", "--model", model, "--gallery", photos, "--output", str(tmp_path / "j")]
    fails(fresh + ["--ann_param", "pca_dim"], "expected KEY=INTEGER")
    fails(fresh + ["--ann_param", "pcadim=8"], "unknown ANN parameters ['pcadim']")
    fails(fresh + ["--ann_param", "m=0"], "m must be a positive integer")
    fails(fresh + ["--ann", "none", "--ann_param", "m=8"], "drop --ann none")


def test_space_gallery_caches_its_approximate_index_once_past_the_threshold(setup, tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO_ROOT / "spaces" / "sketch-an-anchor"))
    import sketch_search

    monkeypatch.setattr(sketch_search, "ANN_MIN_GALLERY", 5)  # a 10-photo gallery counts as large
    model, transform = sketch_search.load_model(setup / "model")
    model_dir = tmp_path / "model"
    shutil.copytree(setup / "model", model_dir)
    built = sketch_search.load_or_build_gallery(model, transform, model_dir, setup / "photos")
    assert built.ann is not None
    loaded = sketch_search.load_or_build_gallery(model, transform, model_dir, setup / "photos")  # from the cache
    assert loaded.ann is not None and loaded.ann.kind == built.ann.kind
    query = built.embeddings[:2]
    assert torch.equal(loaded.search(query, k=3)[1], built.search(query, k=3)[1])
