"""Data-parallel training: N processes x batch b train the model of 1 process x batch N*b.

Two CPU processes on a gloo group, as `torchrun --nproc_per_node 2 train.py ...` starts them:
- every family's loss, gathered across ranks, gives the one-process loss and (after DDP's gradient average)
  the one-process gradient;
- a whole `train.py` run under torchrun ends with the weights of the one-process run with the global batch,
  and a 2-process run stopped and resumed ends with the weights of an uninterrupted one;
- the batch pipeline: shares of a global batch, background workers give the batches of the loop itself.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from conftest import REPO_ROOT, tiny_vit_config

WORLD = 2
ROWS = 8  # global batch of the direct loss tests


# -- the losses, gathered across two processes -------------------------------------------------------------------
def _loss_cases():
    """name -> (make inputs from a generator, loss of those inputs). Inputs: {"sharded": rows split across ranks,
    "shared": the same on every rank}. The loss functions are called exactly as the training steps call them."""
    from hf_sbir.losses.adapt_align import adapt_align_loss
    from hf_sbir.losses.fg_sbir import contextual_distillation_loss, fg_sbir_loss
    from hf_sbir.losses.shape_views import contrastive_cross_entropy
    from hf_sbir.losses.sketch_an_anchor import anchor_similarity, sketch_an_anchor_loss
    from hf_sbir.models.sketch_an_anchor import SketchAnAnchorOutput

    def unit(g, *shape):
        return torch.nn.functional.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)

    def sketch_an_anchor(g):
        classes = 5
        sharded = {f"{d}_{f}": unit(g, ROWS, 6) for d in ("sketch", "photo") for f in ("embeddings", "word_embeddings", "visual_embeddings")}
        sharded["labels"] = torch.randint(0, classes, (ROWS,), generator=g)
        shared = {"adapted_word": unit(g, classes, 6), "adapted_visual": unit(g, classes, 6),
                  "word_anchors": torch.randn(classes, 4, generator=g, dtype=torch.float64),
                  "visual_anchors": torch.randn(classes, 3, generator=g, dtype=torch.float64)}
        return sharded, shared

    def sketch_an_anchor_fn(x, s):
        def out(domain):
            return SketchAnAnchorOutput(**{f: x[f"{domain}_{f}"] for f in ("embeddings", "word_embeddings", "visual_embeddings")})

        adapted = {"word": s["adapted_word"], "visual": s["adapted_visual"]}
        sims = {"word": anchor_similarity(s["word_anchors"]), "visual": anchor_similarity(s["visual_anchors"])}
        return sketch_an_anchor_loss(out("sketch"), out("photo"), x["labels"], adapted, sims, 0.07, 0.1).total

    def pairs(g):
        return {"a": torch.randn(ROWS, 6, generator=g, dtype=torch.float64), "b": torch.randn(ROWS, 6, generator=g, dtype=torch.float64)}, {}

    def fg_sbir(g):
        sharded = {k: torch.randn(ROWS, 6, generator=g, dtype=torch.float64) for k in ("s", "sp", "sn", "p", "pa", "pn", "student", "teacher")}
        return sharded, {}

    def fg_sbir_fn(x, s):
        kd = contextual_distillation_loss(x["student"], x["teacher"], 0.5, num_neighbours=3)
        return fg_sbir_loss(x["s"], x["sp"], x["sn"], x["p"], x["pa"], x["pn"], distillation=kd).total

    def adapt_align(g):
        sharded = {"logits": torch.randn(ROWS, 5, generator=g, dtype=torch.float64), "labels": torch.randint(0, 5, (ROWS,), generator=g),
                   "student": torch.randn(ROWS, 6, generator=g, dtype=torch.float64), "teacher": torch.randn(ROWS, 6, generator=g, dtype=torch.float64)}
        return sharded, {}

    return {
        "sketch_an_anchor": (sketch_an_anchor, sketch_an_anchor_fn),
        "shape_views": (pairs, lambda x, s: contrastive_cross_entropy(x["a"], x["b"], 0.1)),
        "fg_sbir": (fg_sbir, fg_sbir_fn),
        "adapt_align": (adapt_align, lambda x, s: adapt_align_loss(x["logits"], x["labels"], x["student"], x["teacher"], 0.5).total),
    }


def _loss_and_grads(name, rank, world):
    make, loss_fn = _loss_cases()[name]
    sharded, shared = make(torch.Generator().manual_seed(0))
    size = ROWS // world
    sharded = {k: v[rank * size : (rank + 1) * size].clone() for k, v in sharded.items()}
    leaves = [v for v in (*sharded.values(), *shared.values()) if v.is_floating_point()]
    for v in leaves:
        v.requires_grad_(True)
    loss = loss_fn(sharded, shared)
    loss.backward()
    return loss.detach(), {k: v.grad for k, v in {**sharded, **shared}.items() if v.is_floating_point()}


def _loss_worker(rank, world, store_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world)
    try:
        results = {name: _loss_and_grads(name, rank, world) for name in _loss_cases()}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def gathered_losses(tmp_path_factory):
    out = tmp_path_factory.mktemp("gathered")
    # spawn, not fork: a forked child inherits the parent's OpenMP thread pool after earlier tests used it, and its
    # first parallel op then hangs (seen with 2 intra-op threads, CI's default).
    mp.start_processes(_loss_worker, args=(WORLD, str(out / "store"), str(out)), nprocs=WORLD, start_method="spawn")
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("name", ["sketch_an_anchor", "shape_views", "fg_sbir", "adapt_align"])
def test_each_familys_loss_gathered_over_two_processes_equals_one_process(gathered_losses, name):
    single_loss, single_grads = _loss_and_grads(name, 0, 1)
    losses = [gathered_losses[r][name][0] for r in range(WORLD)]
    # What DDP does: average the processes' gradients (and we log the average of their losses).
    assert torch.stack(losses).mean().item() == pytest.approx(single_loss.item(), rel=1e-6)  # adapt_align computes L_kd in float32
    size = ROWS // WORLD
    for key, expected in single_grads.items():
        grads = [gathered_losses[r][name][1][key] for r in range(WORLD)]
        if expected is None:  # no gradient by design (a teacher's features)
            assert all(g is None for g in grads), key
            continue
        if expected.shape[0] == ROWS and grads[0].shape[0] == size:  # rows split across processes
            # d(loss)/d(own rows) on each process is WORLD x the one-process gradient; DDP's average divides it out.
            got = torch.cat(grads) / WORLD
        else:  # inputs every process shares: DDP averages their gradients
            got = torch.stack(grads).mean(dim=0)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9, msg=f"{name}: {key}")


def test_without_gathering_the_in_batch_negatives_would_differ(gathered_losses):
    """The check above can fail: the contrastive loss of a local half-batch is not the global one."""
    from hf_sbir.losses.shape_views import contrastive_cross_entropy

    single_loss, _ = _loss_and_grads("shape_views", 0, 1)
    make, _ = _loss_cases()["shape_views"]
    x, _ = make(torch.Generator().manual_seed(0))
    halves = [contrastive_cross_entropy(x["a"][i : i + 4], x["b"][i : i + 4], 0.1, gather=False) for i in (0, 4)]
    assert abs(torch.stack(halves).mean().item() - single_loss.item()) > 1e-3


# -- the batch pipeline --------------------------------------------------------------------------------------------
class _CountingMethod:
    """A method whose items are their own plan entries (to see who gets which share)."""

    def __init__(self, seed=0):
        self.seed = seed

    def batch_plan(self, step, size):
        g = torch.Generator().manual_seed(self.seed * 1000 + step)
        return {"items": torch.randperm(100, generator=g)[:size].tolist(), "step": step}

    def make_batch(self, step, plan):
        return {"items": torch.tensor(plan["items"]), "step": torch.tensor(plan["step"])}


def test_processes_and_micro_steps_take_disjoint_shares_of_one_global_batch():
    from hf_sbir.training import data_pipeline
    from hf_sbir.training.method import TrainingMethod

    # _CountingMethod stands for a TrainingMethod with a batch plan.
    method = type("M", (_CountingMethod, TrainingMethod), {})(seed=3)
    single = {i: micro for i, micro, _ in data_pipeline.training_batches(method, 2, 5, batch_size=12)}
    for processes, accumulation in ((2, 1), (3, 2), (1, 4)):
        b = 12 // (processes * accumulation)
        got = {}
        for rank in range(processes):
            for iteration, micro, _ in data_pipeline.training_batches(method, 2, 5, b, accumulation, processes, rank):
                got.setdefault(iteration, {})[rank] = micro
        for iteration in range(2, 5):
            # micro-step m of rank r holds share m * processes + r of the step's global batch
            shares = [got[iteration][r][m]["items"] for m in range(accumulation) for r in range(processes)]
            assert torch.equal(torch.cat(shares), single[iteration][0]["items"]), (processes, accumulation)


def test_uneven_global_batch_is_a_clear_error():
    from hf_sbir.training.data_pipeline import share_of_plan

    assert share_of_plan([1, 2, 3, 4], 1, 2) == [3, 4]
    with pytest.raises(ValueError, match="does not split into 2 equal shares"):
        share_of_plan([1, 2, 3], 0, 2)


def test_background_workers_give_the_batches_of_the_loop_itself(tmp_path):
    """Decoding in 2 DataLoader worker processes yields exactly the batches built in the loop's own process."""
    from accelerate import Accelerator

    from hf_sbir.training.data_pipeline import training_batches
    from hf_sbir.training.methods import get_method_class
    from hf_sbir.training.trainer import load_data

    from test_training import tiny_args

    args = tiny_args(tmp_path)
    method = get_method_class("sketch_an_anchor")(args)
    model = method.build_model()
    transform = method.build_transform(model)
    method.setup(model, load_data(args), transform, Accelerator(cpu=True))
    inline = list(training_batches(method, 1, 4, 3, accumulation=2, num_workers=0))
    background = list(training_batches(method, 1, 4, 3, accumulation=2, num_workers=2))
    assert [i for i, _, _ in inline] == [i for i, _, _ in background] == [1, 2, 3]
    for (_, a, _), (_, b, _) in zip(inline, background):
        for x, y in zip(a, b):
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    # the whole-step view is next_batch: the two micro-batches of step 1 are its two halves (pixel-exact)
    whole = get_method_class("sketch_an_anchor")(tiny_args(tmp_path, batch_size=6))
    whole.setup(model, load_data(args), transform, Accelerator(cpu=True))
    full = whole.next_batch(1)
    assert torch.equal(torch.cat([m["sketch_pixel_values"] for m in inline[0][1]]), full["sketch_pixel_values"])
    assert torch.equal(torch.cat([m["labels"] for m in inline[0][1]]), full["labels"])


# -- whole runs under torchrun ---------------------------------------------------------------------------------------
def _run_config(tmp_path, name, method="sketch_an_anchor", **overrides):
    config = dict(
        method=method, dataset="embedded", split="embedded", backbone_config=tiny_vit_config().to_dict(),
        text_embedder="minilm", iterations=4, batch_size=6, learning_rate=1e-3, min_learning_rate=1e-4,
        warmup_iterations=2, image_size=32, checkpoint_every=2, eval_batch_size=64, eval_before=False,
        progress=False, log_with="jsonl", num_workers=1, output_dir=str(tmp_path / name),
    )
    if method == "sketch_an_anchor":
        config.update(model_config={"projection_dim": 16, "gcn_hidden_size": 16, "gcn_num_layers": 2}, method_args={"num_neighbours": 3})
    config.update(overrides)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


def _launch(config, processes, *extra):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if processes == 1:
        command = [sys.executable, str(REPO_ROOT / "train.py")]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                   str(REPO_ROOT / "train.py")]
    proc = subprocess.run([*command, "--config", str(config), *extra], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _assert_same_weights(a_dir, b_dir, atol=1e-4):
    a, b = load_file(str(Path(a_dir) / "model" / "model.safetensors")), load_file(str(Path(b_dir) / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert worst <= atol, worst
    return worst


def _compare_runs(tmp_path, one_name, two_name):
    _assert_same_weights(tmp_path / one_name, tmp_path / two_name)
    # The schedule counts optimiser steps (not steps x processes), and the logged loss is the global batch's.
    log_one = [json.loads(line) for line in (tmp_path / one_name / "logs" / "metrics.jsonl").read_text().splitlines()]
    log_two = [json.loads(line) for line in (tmp_path / two_name / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in log_two] == pytest.approx([r["lr"] for r in log_one], rel=1e-9)
    assert [r["loss"] for r in log_two] == pytest.approx([r["loss"] for r in log_one], abs=1e-4)


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_global_batch_and_resume_exactly(tmp_path):
    """Sketch-an-Anchor under `torchrun --nproc_per_node 2 train.py`: batch 3 per process = 1 process x batch 6;
    a 2-process run stopped after 2 iterations and resumed ends with the weights of the uninterrupted one."""
    one = _launch(_run_config(tmp_path, "one", batch_size=6), 1)
    two = _launch(_run_config(tmp_path, "two", batch_size=3), 2)
    _compare_runs(tmp_path, "one", "two")
    # Only the main process reports: one metric table, one export.
    assert two.stdout.count("Model saved to") == 1 == one.stdout.count("Model saved to")

    split = _run_config(tmp_path, "split", batch_size=3)
    _launch(split, 2, "--stop_after", "2")
    state = json.loads((tmp_path / "split" / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["iterations_done"] == 2 and not (tmp_path / "split" / "model").exists()
    _launch(split, 2, "--resume", "true")
    assert _assert_same_weights(tmp_path / "two", tmp_path / "split", atol=0.0) == 0.0


@pytest.mark.slow
def test_shape_views_on_two_processes_trains_like_one_with_the_global_batch(tmp_path):
    settings = dict(method_args={"num_train_shapes": 4, "views_per_shape": 4, "num_test_shapes": 2, "render_size": 64, "sweep_layers": False})
    _launch(_run_config(tmp_path, "one", "shape_views", batch_size=6, **settings), 1)
    _launch(_run_config(tmp_path, "two", "shape_views", batch_size=3, **settings), 2)
    _compare_runs(tmp_path, "one", "two")
