"""The shared training loop as users rely on it: a resumed run ends with the weights of one that never
stopped even when the model draws random numbers (dropout), for every method family; `keep_checkpoints`
keeps the newest N; gradient accumulation consumes new data for every micro-batch and steps like the
larger batch; the Sketch-an-Anchor step takes its anchor targets from the input anchors (eq. 3/4)."""

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModel, PvtV2Config

import hf_sbir  # noqa: F401  (Auto registration)
from hf_sbir.training import TrainConfig, list_checkpoints, train
from hf_sbir.training.method import TrainingMethod
from hf_sbir.training.methods import METHODS

from conftest import tiny_vit_config

pytestmark = pytest.mark.slow

DROPOUT = 0.1


def _tiny_pvt(**overrides):
    return PvtV2Config(
        num_encoder_blocks=2, depths=[1, 1], hidden_sizes=[16, 32], sr_ratios=[2, 1], patch_sizes=[7, 3],
        strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], image_size=32, **overrides,
    )


# Every family with dropout switched on in its backbone (Adapt and Align's adapters have dropout 0.1 by
# default, so its backbone stays as it is).
FAMILIES = {
    "sketch_an_anchor": dict(
        dataset="embedded", split="embedded", text_embedder="minilm",
        backbone_config=tiny_vit_config(hidden_dropout_prob=DROPOUT).to_dict(),
        model_config={"projection_dim": 16, "gcn_hidden_size": 16, "gcn_num_layers": 2}, method_args={"num_neighbours": 3},
    ),
    "adapt_align": dict(
        dataset="embedded", split="embedded", text_embedder="minilm", backbone_config=tiny_vit_config().to_dict(),
        method_args={"adapter_bottleneck_size": 8},
    ),
    "fg_sbir": dict(
        dataset="embedded", split=None, backbone_config=_tiny_pvt(hidden_dropout_prob=DROPOUT).to_dict(),
        model_config={"embedding_dim": 16}, method_args={"ema_decay": 0.5},
    ),
    "shape_views": dict(
        split=None, backbone_config=tiny_vit_config(num_hidden_layers=3, hidden_dropout_prob=DROPOUT).to_dict(),
        method_args={"num_train_shapes": 4, "views_per_shape": 2, "num_test_shapes": 3, "render_size": 48, "feature_layer": 2},
    ),
}


def family_args(tmp_path, method, name, **overrides):
    kwargs = dict(
        method=method, iterations=4, batch_size=4, learning_rate=1e-3, min_learning_rate=1e-4, warmup_iterations=1,
        image_size=32, checkpoint_every=2, eval_batch_size=64, eval_before=False, max_eval_queries=8,
        output_dir=str(tmp_path / name), progress=False, log_with="none",
    )
    kwargs.update(FAMILIES[method])
    kwargs.update(overrides)
    return TrainConfig(**kwargs)


@pytest.mark.parametrize("method", sorted(FAMILIES))
def test_resume_with_dropout_gives_the_weights_of_an_uninterrupted_run(tmp_path, method):
    full = train(family_args(tmp_path, method, "full"))
    # The model really draws random numbers while training, so the RNG state must survive the resume.
    model = AutoModel.from_pretrained(full.model_dir)
    assert any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()), "no active dropout: the test would be vacuous"

    stopped = train(family_args(tmp_path, method, "split", stop_after=2))
    assert not stopped.finished and stopped.iterations_done == 2
    resumed = train(family_args(tmp_path, method, "split", resume=True))
    assert resumed.finished and resumed.iterations_done == 4
    a, b = (load_file(str(r.model_dir / "model.safetensors")) for r in (full, resumed))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# -- a method whose loss is a per-sample mean, so that accumulation can be compared exactly -------------
ROWS_AS = "sketch_an_anchor"


class _RowsMethod(TrainingMethod):
    """The global batch of step `t` with `size` items is rows [t*size, (t+1)*size) of a fixed stream; the loss
    is a per-sample mean (no in-batch negatives), so accumulated micro-batches must give exactly the
    gradient of the larger batch. Records the rows of every micro-batch it builds."""

    name = "rows"
    built: list[list[int]] = []

    def build_model(self):
        return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))

    def build_transform(self, model):
        return None

    def load_data(self):
        return None

    def batch_plan(self, step, size):
        return list(range(step * size, (step + 1) * size))

    def make_batch(self, step, plan):
        type(self).built.append(list(plan))
        g = torch.Generator().manual_seed(1000)
        stream_x, stream_y = torch.randn(400, 6, generator=g), torch.randn(400, 3, generator=g)
        return {"x": stream_x[plan], "y": stream_y[plan]}

    def training_step(self, model, batch, step):
        loss = (model(batch["x"]) - batch["y"]).pow(2).sum(-1).mean()
        return loss, {"loss": loss.item()}


@pytest.fixture
def rows_method(monkeypatch):
    # Registered under an existing method name: TrainConfig accepts only the shipped method names.
    monkeypatch.setitem(METHODS, ROWS_AS, f"{__name__}:_RowsMethod")
    _RowsMethod.built = []
    return _RowsMethod


def _rows_args(tmp_path, name, **overrides):
    # stop_after < iterations: the run ends at a checkpoint and skips the export (this toy has no processor);
    # num_workers=0: the toy records its micro-batches in this process.
    # Weight decay makes the gradient's scale matter (Adam alone divides it out), so a micro-batch loss
    # that is not averaged over the accumulation steps shows.
    kwargs = dict(
        method=ROWS_AS, iterations=5, stop_after=3, batch_size=8, learning_rate=0.05, min_learning_rate=0.01, weight_decay=0.5,
        warmup_iterations=2, checkpoint_every=1, keep_checkpoints=10, eval_before=False, output_dir=str(tmp_path / name),
        progress=False, log_with="none", num_workers=0,
    )
    kwargs.update(overrides)
    return TrainConfig(**kwargs)


def _checkpoint_weights(output_dir):
    return load_file(str(list_checkpoints(output_dir)[-1] / "model.safetensors"))


def test_gradient_accumulation_uses_new_data_per_micro_batch_and_matches_the_larger_batch(tmp_path, rows_method):
    big = train(_rows_args(tmp_path, "big"))
    assert rows_method.built == [list(range(t * 8, t * 8 + 8)) for t in range(3)]
    rows_method.built = []
    accumulated = train(_rows_args(tmp_path, "acc", batch_size=4, gradient_accumulation_steps=2))
    # Each optimiser step's two micro-batches are the two halves of that step's batch of 8: every item
    # once, none shared with another step.
    assert rows_method.built == [list(range(m * 4, m * 4 + 4)) for m in range(6)]
    assert accumulated.iterations_done == big.iterations_done == 3
    # One optimiser (and LR-schedule) step per 2 micro-batches: the weights of the batch-8 run.
    a, b = _checkpoint_weights(big.output_dir), _checkpoint_weights(accumulated.output_dir)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    # The learning rates logged per iteration follow the same schedule.
    assert [h["lr"] for h in accumulated.history] == pytest.approx([h["lr"] for h in big.history])
    # Sanity: without accumulation, batch 4 is another run (so the comparison above can fail).
    small = train(_rows_args(tmp_path, "small", batch_size=4))
    assert not torch.allclose(_checkpoint_weights(small.output_dir)["0.weight"], a["0.weight"], atol=1e-4)


def test_gradient_accumulation_with_clipping_matches_the_larger_batch(tmp_path, rows_method):
    # Clipping acts on the accumulated gradient (once per optimiser step), as it does on the larger batch.
    big = train(_rows_args(tmp_path, "big", max_grad_norm=0.05))
    accumulated = train(_rows_args(tmp_path, "acc", batch_size=4, gradient_accumulation_steps=2, max_grad_norm=0.05))
    a, b = _checkpoint_weights(big.output_dir), _checkpoint_weights(accumulated.output_dir)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_keep_checkpoints_keeps_exactly_the_newest(tmp_path, rows_method, keep):
    result = train(_rows_args(tmp_path, f"keep{keep}", iterations=8, stop_after=5, keep_checkpoints=keep))
    assert [p.name for p in list_checkpoints(result.output_dir)] == [f"checkpoint-{i}" for i in range(6 - keep, 6)]
    # A resumed run continues from the newest one and keeps pruning to the newest `keep`.
    resumed = train(_rows_args(tmp_path, f"keep{keep}", iterations=8, stop_after=1, resume=True, keep_checkpoints=keep))
    assert resumed.iterations_done == 6
    assert [p.name for p in list_checkpoints(result.output_dir)] == [f"checkpoint-{i}" for i in range(7 - keep, 7)]


# -- Sketch-an-Anchor's training step --------------------------------------------------------------
@pytest.fixture(scope="module")
def saa_step(tmp_path_factory):
    """A Sketch-an-Anchor method set up on the embedded data as train() does, its model and transform."""
    from accelerate import Accelerator

    from hf_sbir.training.methods import get_method_class

    args = family_args(tmp_path_factory.mktemp("saa"), "sketch_an_anchor", "run", batch_size=6)
    method = get_method_class("sketch_an_anchor")(args)
    torch.manual_seed(0)
    model = method.build_model().eval()
    transform = method.build_transform(model)
    method.setup(model, method.load_data(), transform, Accelerator(cpu=True))
    return method, model


def test_step_targets_come_from_the_input_anchors_not_the_adapted_ones(saa_step):
    """Eq. 3/4: the target distributions sigma(A^s) use the similarities of the anchors given as input
    (E_word, E_visual), while the representations are matched to the GCN-adapted anchors."""
    from hf_sbir.losses import anchor_similarity, sketch_an_anchor_loss
    from hf_sbir.models.sketch_an_anchor import SketchAnAnchorOutput

    method, model = saa_step
    batch = method.next_batch(3)
    assert {"word_anchors", "visual_anchors", "labels"} <= set(batch)
    with torch.no_grad():
        _, logs = method.training_step(model, batch, 3)
        n = batch["sketch_pixel_values"].shape[0]
        sketch = model(pixel_values=batch["sketch_pixel_values"])
        photo = model(pixel_values=batch["photo_pixel_values"])
        adapted = model.adapt_anchors(batch["word_anchors"], batch["visual_anchors"]).as_dict()
    cfg = model.config

    def losses(sims):
        return sketch_an_anchor_loss(
            SketchAnAnchorOutput(**{f: getattr(sketch, f) for f in ("embeddings", "word_embeddings", "visual_embeddings")}),
            SketchAnAnchorOutput(**{f: getattr(photo, f) for f in ("embeddings", "word_embeddings", "visual_embeddings")}),
            batch["labels"], adapted, sims, cfg.contrastive_temperature, cfg.anchor_similarity_temperature,
        ).as_floats()

    from_input = losses({k: anchor_similarity(batch[f"{k}_anchors"]) for k in ("word", "visual")})
    from_adapted = losses({k: anchor_similarity(adapted[k]) for k in ("word", "visual")})
    assert n == 6 and set(logs) >= set(from_input)
    for key, value in from_input.items():
        assert logs[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    # The two readings give different numbers on this batch, so the check above tells them apart.
    assert logs["loss_sample_word"] != pytest.approx(from_adapted["loss_sample_word"], rel=1e-3)
    assert logs["loss_sem_visual_photo"] != pytest.approx(from_adapted["loss_sem_visual_photo"], rel=1e-3)


def test_step_anchors_are_a_fresh_draw_per_step_and_the_same_for_the_same_step(saa_step):
    method, _ = saa_step
    a, again, other = method.next_batch(5), method.next_batch(5), method.next_batch(6)
    for key in a:
        assert torch.equal(a[key], again[key]), key
    assert not torch.equal(a["visual_anchors"], other["visual_anchors"])
    # Each step's word anchors are stored neighbours of their own class (§3.5), not always the class word.
    anchors = method.anchors
    steps = [method.next_batch(s)["word_anchors"] for s in range(8)]
    own = [torch.equal(w, anchors.word) for w in steps]
    assert not all(own)
    for word in steps:
        is_neighbour = (word[:, None, :] == anchors.word_neighbours).all(-1).any(-1)
        assert is_neighbour.all()


# -- push_to_hub, against a stand-in for the Hub client (tests never reach the network) --------------
class _FakeHub:
    calls: list = []
    fail_with: Exception | None = None

    def create_repo(self, repo_id, **kwargs):
        type(self).calls.append(("create_repo", repo_id, kwargs))
        if type(self).fail_with is not None:
            raise type(self).fail_with

    def upload_folder(self, **kwargs):
        type(self).calls.append(("upload_folder", kwargs))
        return f"https://huggingface.co/{kwargs['repo_id']}/commit/abc"


def test_push_to_hub_creates_the_repo_if_needed_and_uploads_the_folder(tmp_path, monkeypatch):
    import huggingface_hub

    from hf_sbir.training.trainer import push_folder_to_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeHub)
    _FakeHub.calls, _FakeHub.fail_with = [], None
    url = push_folder_to_hub(tmp_path / "model", "me/my-model")
    assert url == "https://huggingface.co/me/my-model/commit/abc"
    assert _FakeHub.calls == [
        ("create_repo", "me/my-model", {"exist_ok": True}),  # a second push to the same repo works
        ("upload_folder", {"folder_path": str(tmp_path / "model"), "repo_id": "me/my-model", "commit_message": "Upload hf-sbir model"}),
    ]


def test_push_to_hub_errors_say_what_to_do_and_where_the_model_is(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    from hf_sbir.training.trainer import push_folder_to_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeHub)
    import httpx

    response = httpx.Response(401, request=httpx.Request("POST", "https://huggingface.co/api/repos/create"))
    _FakeHub.calls, _FakeHub.fail_with = [], HfHubHTTPError("401 Unauthorized", response=response)
    with pytest.raises(RuntimeError) as info:
        push_folder_to_hub(tmp_path / "m", "me/x")
    assert str(info.value) == (
        "push_to_hub to 'me/x' failed: 401 Unauthorized. Log in with `hf auth login` (or set HF_TOKEN) and check the "
        f"repository name. The model is saved locally in {tmp_path / 'm'}."
    )
    _FakeHub.fail_with = ConnectionError("no route")
    with pytest.raises(RuntimeError) as info:
        push_folder_to_hub(tmp_path / "m", "me/x")
    assert str(info.value) == (
        "push_to_hub to 'me/x' failed: the Hugging Face Hub is not reachable (ConnectionError: no route). "
        f"The model is saved locally in {tmp_path / 'm'}; upload it later with `hf upload me/x {tmp_path / 'm'}`."
    )
