"""The sketch-search Space (spaces/sketch-an-anchor): search logic and an end-to-end browser run."""

import importlib.util
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from conftest import tiny_sketch_an_anchor_config

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network calls from gradio
REPO_ROOT = Path(__file__).resolve().parents[1]
SPACE = REPO_ROOT / "spaces" / "sketch-an-anchor"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

sys.path.insert(0, str(SPACE))
import sketch_search  # noqa: E402
from sketch_search import SketchSearch, SketchSearchError  # noqa: E402


def _sketch(shape: str = "circle", size: int = 96) -> Image.Image:
    img = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse((15, 15, size - 15, size - 15), outline=0, width=4)
    else:
        draw.rectangle((20, 10, size - 20, size - 10), outline=0, width=4)
    return img


@pytest.fixture(scope="module")
def tiny_space(tmp_path_factory):
    """A saved tiny model folder + a tiny photo folder (3 classes x 4 generated photos). The gallery indexes
    the tests build go to the user's cache like a user's would; they are removed afterwards."""
    from hf_sbir import SketchAnAnchorModel
    from hf_sbir.data import SbirImageTransform

    root = tmp_path_factory.mktemp("space")
    torch.manual_seed(0)
    model_dir = root / "model"
    SketchAnAnchorModel(tiny_sketch_an_anchor_config()).save_pretrained(model_dir)
    SbirImageTransform(image_size=32, empty_sketch="keep").save_pretrained(model_dir)
    gallery = root / "photos"
    colours = {"circle": (200, 40, 40), "square": (40, 200, 40), "bar": (40, 40, 200)}
    for c, (label, colour) in enumerate(colours.items()):
        (gallery / label).mkdir(parents=True)
        for i in range(4):
            img = Image.new("RGB", (48, 40), (250 - 20 * i, 240, 230))
            d = ImageDraw.Draw(img)
            box = (5 + i, 5 + c, 40 - i, 34 - c)
            (d.ellipse if label == "circle" else d.rectangle)(box, fill=colour)
            img.save(gallery / label / f"{i}.png")
    yield model_dir, gallery
    for spec in (gallery, "embedded", *_HOME_GALLERIES):
        shutil.rmtree(sketch_search.gallery_cache_dir(model_dir, spec), ignore_errors=True)


_HOME_GALLERIES: list[Path] = []


@pytest.fixture
def home_gallery(tiny_space):
    """A copy of the tiny photo folder under $HOME: outside the working directory and the temp dir, where
    users keep their photos (and where Gradio refuses to serve files from unless told)."""
    folder = Path.home() / f"hf-sbir-space-test-{os.getpid()}" / "photos"
    shutil.copytree(tiny_space[1], folder, dirs_exist_ok=True)
    _HOME_GALLERIES.append(folder)
    try:
        yield folder
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def searcher(tiny_space):
    model_dir, gallery = tiny_space
    model, transform = sketch_search.load_model(model_dir)
    index = sketch_search.load_or_build_gallery(model, transform, model_dir, gallery)
    return SketchSearch(model, transform, index)


def test_results_sorted_and_k_respected(searcher, tiny_space):
    for k in (1, 5, 12, 20):
        results = searcher.search(_sketch(), k)
        assert len(results) == min(k, 12)
        scores = [score for _, _, score in results]
        assert scores == sorted(scores, reverse=True)
        for image, label, score in results:
            assert Path(image).is_file() and label in {"circle", "square", "bar"}
            assert -1.0001 <= score <= 1.0001


def test_search_matches_manual_embedding(searcher):
    sketch = _sketch("square")
    with torch.no_grad():
        query = searcher.model(pixel_values=searcher.transform(sketch, "sketch")[None]).embeddings
    expected = (query @ searcher.index().embeddings.T)[0].topk(3).values
    got = [score for _, _, score in searcher.search(sketch, 3)]
    assert torch.allclose(torch.tensor(got), expected, atol=1e-5)


def test_empty_sketch_and_bad_inputs_give_clear_messages(searcher, tmp_path):
    with pytest.raises(SketchSearchError, match="empty"):
        searcher.search(Image.new("RGB", (64, 64), "white"), 5)
    transparent = {"background": None, "layers": [Image.new("RGBA", (64, 64), (0, 0, 0, 0))], "composite": None}
    with pytest.raises(SketchSearchError, match="empty"):
        searcher.search(transparent, 5)
    with pytest.raises(SketchSearchError, match="k must be"):
        searcher.search(_sketch(), 0)
    not_image = tmp_path / "notes.png"
    not_image.write_text("definitely not a png")
    with pytest.raises(SketchSearchError, match="not an image"):
        searcher.search(str(not_image), 3)


def test_sketchpad_value_and_huge_upload(searcher, tmp_path):
    layer = _sketch().convert("RGBA")
    value = {"background": Image.new("RGBA", layer.size, (255, 255, 255, 0)), "layers": [layer], "composite": None}
    assert len(searcher.search(value, 4)) == 4
    big = Image.new("L", (5000, 4200), 255)  # 21 MP
    ImageDraw.Draw(big).ellipse((500, 500, 4500, 3700), outline=0, width=40)
    path = tmp_path / "big.png"
    big.save(path)
    opened = sketch_search.open_upload(path)
    assert opened.size[0] * opened.size[1] <= sketch_search.MAX_PIXELS
    assert opened.info["downscaled_from"] == (5000, 4200)
    assert len(searcher.search(str(path), 2)) == 2


def test_missing_model_message(tmp_path):
    with pytest.raises(SketchSearchError, match="configs/quickstart.yaml"):
        sketch_search.load_model(tmp_path / "nope")


def test_gallery_index_is_cached_outside_the_model_folder(tiny_space, searcher):
    """The index goes to hf-sbir's cache dir, never into the model folder (a downloaded model folder may be
    read-only, and a model folder is what users upload)."""
    model_dir, gallery = tiny_space
    cache = sketch_search.gallery_cache_dir(model_dir, gallery)
    assert (cache / "index.json").is_file()
    assert cache.parent == sketch_search.cache_root() / "space_galleries"
    assert not (model_dir / "gallery_cache").exists()
    before = sorted(p.name for p in model_dir.iterdir())
    reloaded = sketch_search.load_or_build_gallery(searcher.model, searcher.transform, model_dir, gallery)
    assert torch.equal(reloaded.embeddings, searcher.index().embeddings)
    assert sorted(p.name for p in model_dir.iterdir()) == before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _outside(path: Path, *folders: Path) -> bool:
    return not any(Path(path).resolve().is_relative_to(Path(f).resolve()) for f in folders)


def draw_and_search(page, url: str, status_text: str, labels: set[str], k: int = 5) -> None:
    """Open the app, wait for `status_text` (the gallery is indexed), draw a square with a bar across, search,
    and check that `k` results appear, captioned with one of `labels`, and load. .ci/newcomer.sh uses it too."""
    which = status_text
    page.goto(url, wait_until="domcontentloaded", timeout=20_000)
    page.get_by_text(status_text).wait_for(timeout=60_000)
    page.locator('#sketchpad button[aria-label="Brush"]').click()
    canvas = page.locator("#sketchpad canvas").first
    canvas.wait_for(timeout=10_000)
    box = canvas.bounding_box()
    cx, cy, r = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, min(box["width"], box["height"]) / 4
    page.mouse.move(cx - r, cy - r)
    page.mouse.down()
    for x, y in [(cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r), (cx - r, cy - r)]:
        page.mouse.move(x, y, steps=2)
    page.mouse.up()
    page.mouse.move(cx - r / 2, cy)
    page.mouse.down()
    page.mouse.move(cx + r / 2, cy, steps=2)
    page.mouse.up()
    page.click("#search-button")
    images = page.locator("#results img")
    images.first.wait_for(timeout=15_000)
    deadline = time.time() + 10
    while images.count() < k and time.time() < deadline:
        time.sleep(0.2)
    assert images.count() == k, which
    status = page.locator("#status").inner_text()
    assert "Top match" in status, (which, status)
    captions = page.locator("#results").inner_text()
    assert " — " in captions and any(c in captions for c in labels), (which, captions)
    # The result images really load in the browser (Gradio served them), and no red "Error" anywhere.
    loaded = "img => img.complete && img.naturalWidth > 0"
    deadline = time.time() + 10
    while time.time() < deadline and not all(images.nth(i).evaluate(loaded) for i in range(k)):
        time.sleep(0.2)
    assert all(images.nth(i).evaluate(loaded) for i in range(k)), which
    assert "Error" not in page.locator("body").inner_text(), which


@pytest.mark.browser
def test_browser_draw_and_search(tiny_space, home_gallery):
    """Draw in Chromium and get results, with the galleries users have: the default (the embedded photos in
    hf-sbir's cache) and a photo folder under $HOME; both outside the working directory and the temp dir
    (Gradio serves files from those two only, unless told)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    spec = importlib.util.spec_from_file_location("sketch_space_app", SPACE / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    model_dir = tiny_space[0]
    model, transform = sketch_search.load_model(model_dir)
    artifacts = REPO_ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            for which, gallery in [("embedded", "embedded"), ("home folder", home_gallery)]:
                index = sketch_search.load_or_build_gallery(model, transform, model_dir, gallery)
                paths = [p for p in index.column("path") if p]
                assert paths and all(_outside(p, Path.cwd(), Path(tempfile.gettempdir())) for p in paths), (
                    f"the {which} gallery must sit where users have it (not under cwd or the temp dir): {paths[0]}"
                )
                searcher = SketchSearch(model, transform, index)
                demo = app.build_demo(searcher, default_k=5, gallery_name=which)
                port = _free_port()
                demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
                try:
                    page = browser.new_page(viewport={"width": 1280, "height": 900})
                    labels = {str(label) for label in index.column("label")}
                    draw_and_search(page, f"http://127.0.0.1:{port}/", f"{which}, {len(index)} photos", labels)
                    page.screenshot(path=str(artifacts / f"space-{which.replace(' ', '-')}.png"), full_page=True)
                    page.close()
                finally:
                    demo.close()
        finally:
            browser.close()


def test_space_readme_front_matter_and_requirements():
    """The Space is ready to upload: its README front matter is a valid Space config pointing at an
    existing app file, and requirements.txt installs gradio and hf-sbir."""
    import gradio
    from huggingface_hub import RepoCard, SpaceCardData
    from packaging.requirements import Requirement
    from packaging.version import Version

    card = RepoCard.load(SPACE / "README.md")
    data = SpaceCardData(**card.data.to_dict())
    assert data.sdk == "gradio"
    # sdk_version is pinned to the gradio the repository is tested with; same major version at least.
    assert Version(data.sdk_version).major == Version(gradio.__version__).major
    assert data.app_file and (SPACE / data.app_file).is_file()
    assert data.title and data.license and len(data.short_description) <= 60
    assert data.colorFrom and data.colorTo and data.emoji
    assert "app.py" in card.text  # the body says how to run it

    lines = (SPACE / "requirements.txt").read_text().splitlines()
    lines = [line.split(" #")[0].strip() for line in lines]
    requirements = [Requirement(line) for line in lines if line and not line.startswith(("#", "-"))]
    names = {r.name.lower().replace("_", "-") for r in requirements}
    assert {"gradio", "hf-sbir", "torch"} <= names, names
    hf_sbir_req = next(r for r in requirements if r.name.lower() == "hf-sbir")
    assert hf_sbir_req.url is None or hf_sbir_req.url.startswith("git+https://")
