"""The training loop's own behaviours (`hf_sbir.training.trainer`) on a toy method that trains in a fraction
of a second: the learning-rate schedule, what is logged and where, stop / resume / checkpoint cadence,
the evaluation before training kept across a resume, a non-finite loss, setup errors as one line, and how
a folder holding an earlier run is recognised. (End-to-end runs with real models: test_training.py and
test_training_loop.py; these are fast enough for the mutation runs of TESTING.md.)"""

import json
import logging
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from hf_sbir.training import TrainConfig, list_checkpoints, train
from hf_sbir.training.config import ConfigError
from hf_sbir.training.method import TrainingMethod
from hf_sbir.training.methods import METHODS
from hf_sbir.training.trainer import lr_lambda

AS = "sketch_an_anchor"  # TrainConfig accepts only the shipped method names: the toy is registered under one


class _Toy(TrainingMethod):
    """Rows [t*size, (t+1)*size) of a fixed stream are the global batch of step t; a model with dropout (so a
    resume must restore the RNG); records what the loop asks of it."""

    name = "toy"
    calls: dict = {}
    fail_in = None  # "load_data" / "build_model": raise the error stored in `error` there
    error: Exception | None = None
    nan_at = None  # iteration whose loss is NaN
    log_loss = True  # False: the step logs no "loss" key

    def _record(self, what, value=None):
        type(self).calls.setdefault(what, []).append(value)

    def load_data(self):
        if self.fail_in == "load_data":
            raise self.error
        return None

    def build_model(self):
        if self.fail_in == "build_model":
            raise self.error
        return nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.3), nn.Tanh(), nn.Linear(8, 3))

    def build_transform(self, model):
        return None

    def batch_plan(self, step, size):
        return list(range(step * size, (step + 1) * size))

    def make_batch(self, step, plan):
        g = torch.Generator().manual_seed(7)
        x, y = torch.randn(400, 6, generator=g), torch.randn(400, 3, generator=g)
        self._record("rows", list(plan))
        # "rows" as a list: batches may hold values that are not tensors (names, per-step settings)
        return {"x": x[plan], "y": y[plan], "rows": list(plan)}

    def training_step(self, model, batch, step):
        loss = (model(batch["x"]) - batch["y"]).pow(2).sum(-1).mean()
        if step == self.nan_at:
            loss = loss * float("nan")
        self._record("loss", (step, loss.item()))
        # "rows" as a numpy float32, as a step computing its logs with numpy would give (not a JSON float).
        rows = np.float32(batch["x"].shape[0])
        return loss, ({"loss": loss.item(), "rows": rows} if self.log_loss else {"rows": rows})

    def after_optimizer_step(self, model, step):
        self._record("after_step", step)
        self._record("after_step_model", model)

    def evaluate(self, model, data, transform):
        self._record("evaluate")
        return {"metrics": {"score": 0.25}, "task": "toy"}


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(METHODS, AS, f"{__name__}:_Toy")
    monkeypatch.setattr(_Toy, "calls", {})
    return _Toy


def _args(tmp_path, name="run", **overrides):
    # stop_after < iterations everywhere: the toy has no processor to export (the export: test_training.py).
    kwargs = dict(
        method=AS, iterations=10, stop_after=4, batch_size=4, learning_rate=0.05, min_learning_rate=0.005,
        warmup_iterations=2, checkpoint_every=2, keep_checkpoints=10, eval_before=False, output_dir=str(tmp_path / name),
        progress=False, log_with="none", num_workers=0,
    )
    kwargs.update(overrides)
    return TrainConfig(**kwargs)


def _weights(output_dir, step):
    return load_file(str(output_dir / "checkpoints" / f"checkpoint-{step}" / "model.safetensors"))


def test_progress_bar_counts_the_whole_run_from_where_it_resumed(tmp_path, toy, capsys, monkeypatch):
    """--progress true: one bar over all iterations of the run, starting at the resumed iteration, with the
    step's loss and speed; --progress false: nothing on the terminal."""
    import itertools
    import time
    import types

    from hf_sbir.training import trainer

    train(_args(tmp_path, stop_after=2))
    assert capsys.readouterr().err == ""
    # the loop's clock (used for the speed only) ticks 0.25 s per reading: 4 iterations per second
    clock = itertools.count(100.0, 0.25)
    monkeypatch.setattr(trainer, "time", types.SimpleNamespace(perf_counter=lambda: next(clock), time=time.time))
    train(_args(tmp_path, stop_after=2, resume=True, progress=True))
    last = capsys.readouterr().err.split("\r")[-1].strip()
    assert last.startswith("train:  40%|") and "| 4/10 [" in last, last
    loss = toy.calls["loss"][-1][1]
    assert last.endswith(f", it_s=4.00, loss={loss:.4f}]"), last


def test_resume_of_an_empty_folder_warns_and_starts_in_a_new_nested_folder(tmp_path, toy, caplog):
    """--resume true where no checkpoint exists yet (a job queued with --resume from the start): one warning
    naming the folder, then a normal run, its output folder made with its missing parents; a fresh run without
    --resume warns about nothing. train_config.json is readable, one setting per line."""
    with caplog.at_level(logging.WARNING, logger="hf_sbir"):
        train(_args(tmp_path, name="fresh", stop_after=2))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    caplog.clear()
    out = tmp_path / "runs" / "2026" / "a"
    with caplog.at_level(logging.WARNING, logger="hf_sbir"):
        result = train(_args(tmp_path, name="runs/2026/a", stop_after=2, resume=True))
    assert result.iterations_done == 2 and [c.name for c in list_checkpoints(out)] == ["checkpoint-2"]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [f"resume=True but no checkpoint in {out / 'checkpoints'}: starting from scratch."]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hf_sbir"):
        train(_args(tmp_path, name="runs/2026/a", stop_after=2, resume=True))  # now it has one: no warning
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    infos = [r.getMessage() for r in caplog.records]
    assert f"Resumed from {out / 'checkpoints' / 'checkpoint-2'} (iteration 2 of 10)." in infos
    assert f"Checkpoint 4/10 saved: {out / 'checkpoints' / 'checkpoint-4'}" in infos
    assert infos[-1] == "Stopped after iteration 4 of 10; continue with --resume true."
    assert '  "learning_rate": 0.05,' in (out / "train_config.json").read_text().splitlines()


def test_a_peft_model_is_exported_merged_with_its_adapter_beside_it(tmp_path, toy, monkeypatch):
    """A run whose model carries peft adapters exports the merged model (plain layers, the same function, in
    eval mode; also `TrainResult.model`) and hands the peft model to the export for model/adapter/ (the export
    itself is a stand-in: the toy has no processor to save)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from hf_sbir.training import trainer

    monkeypatch.setattr(_Toy, "build_model", lambda self: get_peft_model(
        nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)), LoraConfig(r=2, target_modules=["0"], init_lora_weights=False)))
    monkeypatch.setattr(_Toy, "model_card_info", lambda self: {"task_name": "toy retrieval"})
    exported = []
    monkeypatch.setattr(trainer, "export_model", lambda model, transform, args, result, card_info=None, adapter=None:
                        exported.append((model, adapter, card_info)) or tmp_path / "run" / "model")
    result = train(_args(tmp_path, iterations=2, warmup_iterations=0, stop_after=None))
    (merged, adapter, card_info), = exported
    assert card_info == {"task_name": "toy retrieval"}  # the method's card info reaches the model card
    assert isinstance(adapter, PeftModel) and result.model is merged and not merged.training
    assert isinstance(merged, nn.Sequential) and type(merged[0]) is nn.Linear  # the LoRA layers merged away
    x = torch.randn(5, 6)
    torch.testing.assert_close(merged(x), adapter.eval()(x))



def test_a_finished_run_is_returned_as_saved_and_an_unreadable_state_never_counts_as_finished(tmp_path, toy):
    """Rerunning the command of a finished run returns its saved results without training; a folder whose
    iteration count or settings cannot be read is never taken for the finished run. (The toy cannot be exported:
    the files the export writes are put in place by hand.) The settings hold a date, as an unquoted YAML date
    gives: they are compared as the settings file records them, as text."""
    import datetime

    args = _args(tmp_path, iterations=1, warmup_iterations=0, stop_after=None, eval_before=True, checkpoint_every=1,
                 model_config={"released": datetime.date(2020, 1, 2)})
    with pytest.raises(AttributeError):
        train(args)
    out = tmp_path / "run"
    (out / "model").mkdir()
    (out / "model" / "config.json").write_text("{}")
    trained = len(toy.calls["loss"])
    again = train(args)
    assert (again.already_finished, again.finished, again.iterations_done) == (True, True, 1)
    assert again.output_dir == out and again.model_dir == out / "model" and len(toy.calls["loss"]) == trained
    assert again.metrics_before == json.loads((out / "eval_before.json").read_text()) == {"metrics": {"score": 0.25}, "task": "toy"}
    assert again.metrics_after == json.loads((out / "eval_after.json").read_text())
    for name in ("eval_before.json", "eval_after.json"):  # for people too: indented like every JSON file of the run
        assert (out / name).read_text() == json.dumps(json.loads((out / name).read_text()), indent=2), name
    (out / "eval_before.json").unlink()
    assert train(args).metrics_before is None  # (the before-training evaluation is lost: not made up)

    state = list_checkpoints(out)[-1] / "trainer_state.json"
    for damaged in ("{}", "not json", None):  # no count, not JSON, no file
        state.unlink(missing_ok=True)
        if damaged is not None:
            state.write_text(damaged)
        with pytest.raises(ConfigError, match=r"already holds this run, stopped at iteration 0 of 1\. Continue it"):
            train(args)
    state.write_text(json.dumps({"iterations_done": 1}))
    assert train(args).already_finished
    settings = json.loads((out / "train_config.json").read_text())
    (out / "train_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="already holds a run whose settings were not recorded"):
        train(args)
    # a setting only one side has (a settings file of another version) makes it another run
    (out / "train_config.json").write_text(json.dumps({**settings, "old_setting": 1}))
    with pytest.raises(ConfigError, match=r"already holds another run \(old_setting: 1 -> None\)"):
        train(args)


def test_learning_rate_warms_up_linearly_then_follows_a_cosine_to_the_floor(tmp_path):
    factor = lr_lambda(_args(tmp_path, iterations=10, warmup_iterations=2, learning_rate=1.0, min_learning_rate=0.1))
    assert [factor(s) for s in (0, 1)] == [0.5, 1.0]  # (step + 1) / warmup
    # cosine over the 8 post-warm-up steps: floor + (1 - floor) * (1 + cos(pi * progress)) / 2
    for step, progress in ((2, 0.0), (4, 0.25), (6, 0.5), (9, 7 / 8), (10, 1.0)):
        assert factor(step) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
    assert factor(25) == pytest.approx(0.1)  # past the end: stays at the floor
    no_warmup = lr_lambda(_args(tmp_path, iterations=4, warmup_iterations=0, learning_rate=2.0, min_learning_rate=0.5))
    assert [no_warmup(s) for s in range(5)] == pytest.approx([0.25 + 0.75 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(5)])
    # warm-up as long as the run: the cosine span is at least one step (no division by zero)
    whole = lr_lambda(_args(tmp_path, iterations=3, warmup_iterations=3, learning_rate=1.0, min_learning_rate=0.0))
    assert [whole(s) for s in range(4)] == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])
    # a cosine part of one step: the rate after it (logged for the last iteration) is the floor
    one = lr_lambda(_args(tmp_path, iterations=3, warmup_iterations=2, learning_rate=1.0, min_learning_rate=0.1))
    assert [one(s) for s in range(4)] == pytest.approx([0.5, 1.0, 1.0, 0.1])


def test_history_logs_the_mean_over_micro_batches_and_the_learning_rate_of_each_step(tmp_path, toy):
    result = train(_args(tmp_path, stop_after=3, gradient_accumulation_steps=2, batch_size=2))
    losses = toy.calls["loss"]
    assert [s for s, _ in losses] == [0, 0, 1, 1, 2, 2]  # two micro-batches per iteration
    assert [h["loss"] for h in result.history] == pytest.approx([(losses[i][1] + losses[i + 1][1]) / 2 for i in (0, 2, 4)])
    assert [h["rows"] for h in result.history] == [2.0, 2.0, 2.0]
    factor = lr_lambda(result_args := _args(tmp_path))
    # the rate logged for iteration t is the one the schedule set after stepping: base * factor(t + 1)
    assert [h["lr"] for h in result.history] == pytest.approx([result_args.learning_rate * factor(t + 1) for t in range(3)])
    assert all(h["data_wait_s"] >= 0 for h in result.history)
    assert toy.calls["after_step"] == [0, 1, 2]  # once per optimiser step, with the iteration and the model trained
    assert all(isinstance(m, nn.Sequential) and m is toy.calls["after_step_model"][0] for m in toy.calls["after_step_model"])
    assert toy.calls["rows"] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11]]  # the shares of each step's batch of 4


def test_jsonl_logs_every_n_iterations_and_the_run_settings(tmp_path, toy):
    result = train(_args(tmp_path, log_with="jsonl", log_every=2, stop_after=5))
    lines = [json.loads(line) for line in (result.output_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4]
    assert [line["loss"] for line in lines] == pytest.approx([result.history[1]["loss"], result.history[3]["loss"]])
    assert {"loss", "lr", "rows", "data_wait_s", "time"} <= set(lines[0])
    recorded = json.loads((result.output_dir / "logs" / "config.json").read_text())
    assert recorded["learning_rate"] == 0.05 and recorded["log_every"] == 2 and recorded["seed"] == 0
    # A resumed run appends to the same log (and records its settings again).
    train(_args(tmp_path, log_with="jsonl", log_every=2, stop_after=2, resume=True))
    lines = [json.loads(line) for line in (result.output_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4, 6]
    every3 = train(_args(tmp_path, "every3", log_with="jsonl", log_every=3, stop_after=7))
    lines = (every3.output_dir / "logs" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [3, 6]
    # log_with none: no logs folder at all
    quiet = train(_args(tmp_path, "quiet", log_with="none", stop_after=2))
    assert not (quiet.output_dir / "logs").exists()


def test_checkpoints_at_every_n_iterations_and_where_the_run_stops(tmp_path, toy):
    result = train(_args(tmp_path, checkpoint_every=3, stop_after=7))
    assert result.finished is False and result.iterations_done == 7 and len(result.history) == 7
    assert [p.name for p in list_checkpoints(result.output_dir)] == ["checkpoint-3", "checkpoint-6", "checkpoint-7"]
    assert json.loads((list_checkpoints(result.output_dir)[-1] / "trainer_state.json").read_text())["iterations_done"] == 7
    # the optimiser is Adam with the run's learning rate (scheduled) and weight decay
    optimizer = torch.load(list_checkpoints(result.output_dir)[-1] / "optimizer.bin", weights_only=True)
    assert [g["weight_decay"] for g in optimizer["param_groups"]] == [0.0]
    decayed = train(_args(tmp_path, "decayed", weight_decay=0.01, stop_after=1))
    optimizer = torch.load(list_checkpoints(decayed.output_dir)[-1] / "optimizer.bin", weights_only=True)
    assert [(g["weight_decay"], g["initial_lr"]) for g in optimizer["param_groups"]] == [(0.01, 0.05)]


def test_resume_continues_with_the_rng_state_and_ends_with_the_uninterrupted_weights(tmp_path, toy, caplog):
    full = train(_args(tmp_path, "full", stop_after=6))
    train(_args(tmp_path, "split", stop_after=2))
    toy.calls.clear()
    resumed = train(_args(tmp_path, "split", stop_after=4, resume=True))
    assert resumed.iterations_done == 6 and [s for s, _ in toy.calls["loss"]] == [2, 3, 4, 5]
    assert len(resumed.history) == 4
    a, b = _weights(full.output_dir, 6), _weights(resumed.output_dir, 6)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The dropout masks matter: another seed trains other weights.
    other = train(_args(tmp_path, "other", stop_after=6, seed=1))
    assert not torch.equal(_weights(other.output_dir, 6)["0.weight"], a["0.weight"])
    # resume=True on an empty folder starts from scratch, and says so.
    with caplog.at_level(logging.WARNING, logger="hf_sbir"):
        fresh = train(_args(tmp_path, "fresh", stop_after=6, resume=True))
    assert "resume=True but no checkpoint" in caplog.text
    assert torch.equal(_weights(fresh.output_dir, 6)["0.weight"], a["0.weight"])


def test_evaluation_before_training_is_done_once_and_kept_across_a_resume(tmp_path, toy):
    first = train(_args(tmp_path, eval_before=True, stop_after=2))
    assert first.metrics_before == {"metrics": {"score": 0.25}, "task": "toy"}
    assert json.loads((first.output_dir / "eval_before.json").read_text()) == first.metrics_before
    assert toy.calls["evaluate"] == [None]
    (first.output_dir / "eval_before.json").write_text(json.dumps({"metrics": {"score": 0.5}}))
    resumed = train(_args(tmp_path, eval_before=True, stop_after=2, resume=True))
    assert toy.calls["evaluate"] == [None]  # read back, not evaluated again
    assert resumed.metrics_before == {"metrics": {"score": 0.5}}
    assert train(_args(tmp_path, "none", stop_after=1)).metrics_before is None and toy.calls["evaluate"] == [None]


@pytest.mark.parametrize("logged", [True, False])
def test_a_non_finite_loss_stops_the_run_and_names_the_last_good_checkpoint(tmp_path, toy, logged, monkeypatch):
    monkeypatch.setattr(toy, "nan_at", 3)
    monkeypatch.setattr(toy, "log_loss", logged)  # caught from the loss tensor too when the step logs no "loss"
    with pytest.raises(FloatingPointError, match=r"^Loss became nan at iteration 3; lower the learning rate or check the data\. "
                       r"Nothing was saved for it; the last good checkpoint is .*checkpoint-2\.$"):
        train(_args(tmp_path, stop_after=6))
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-2"]


def test_a_non_finite_logged_loss_stops_the_run_even_when_this_processes_loss_is_finite(tmp_path, toy, monkeypatch):
    """Under data parallelism the logged loss is the mean over processes: one process's NaN makes it NaN on every
    process, so all stop together (a process that went on alone would wait for the others forever)."""
    step = _Toy.training_step

    def nan_logged(self, model, batch, iteration):
        loss, logs = step(self, model, batch, iteration)
        return loss, {**logs, "loss": float("nan")} if iteration == 3 else logs

    monkeypatch.setattr(_Toy, "training_step", nan_logged)
    with pytest.raises(FloatingPointError, match=r"^Loss became .* at iteration 3; .*checkpoint-2\.$"):
        train(_args(tmp_path, stop_after=6))
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-2"]


def test_non_finite_weights_never_reach_a_checkpoint(tmp_path, toy, monkeypatch):
    def poison(self, model, step):  # e.g. an EMA update gone wrong: the loss of the step was finite
        if step == 2:
            with torch.no_grad():
                model[3].bias.fill_(float("inf"))

    monkeypatch.setattr(_Toy, "after_optimizer_step", poison)
    with pytest.raises(FloatingPointError, match=r"^Weights became non-finite by iteration 3 \(NaN/inf in 1 tensor\(s\), e\.g\. 3\.bias\); "
                       r"no checkpoint was written for it and the last good checkpoint is .*checkpoint-2\."):
        train(_args(tmp_path, checkpoint_every=1, stop_after=5))
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-1", "checkpoint-2"]


@pytest.mark.parametrize("where", ["load_data", "build_model"])
def test_setup_errors_are_one_line_config_errors_and_write_nothing(tmp_path, toy, monkeypatch, where):
    monkeypatch.setattr(toy, "fail_in", where)
    monkeypatch.setattr(toy, "error", KeyError("no column 'sketch'\n   in   the data"))
    with pytest.raises(ConfigError, match=r"^no column 'sketch' in the data$"):  # the message, not repr(KeyError)
        train(_args(tmp_path))
    for error in (OSError("folder /x is missing"), ValueError("bad layout")):
        monkeypatch.setattr(toy, "error", error)
        with pytest.raises(ConfigError, match=f"^{error}$"):
            train(_args(tmp_path))
    monkeypatch.setattr(toy, "error", ConfigError("already one line"))
    with pytest.raises(ConfigError, match="^already one line$"):
        train(_args(tmp_path))
    monkeypatch.setattr(toy, "error", RuntimeError("a bug"))  # not a user error: raised as it is
    with pytest.raises(RuntimeError, match="^a bug$"):
        train(_args(tmp_path))
    assert not (tmp_path / "run").exists()


def test_a_folder_holding_another_run_is_refused_with_what_differs(tmp_path, toy):
    train(_args(tmp_path, stop_after=2))
    before = sorted(p.name for p in (tmp_path / "run").rglob("*"))
    # Bookkeeping settings (stop_after, progress, num_workers) do not make it another run.
    with pytest.raises(ConfigError, match=r"run already holds this run, stopped at iteration 2 of 10\. Continue it with --resume true"):
        train(_args(tmp_path, stop_after=3, progress=True, num_workers=1))
    with pytest.raises(ConfigError) as info:
        train(_args(tmp_path, learning_rate=0.1))
    run = tmp_path / "run"
    assert str(info.value) == (
        f"{run} already holds another run (learning_rate: 0.05 -> 0.1). Pass a new --output_dir for this one (or delete "
        f"{run}); to continue that run, use its settings ({run / 'train_config.json'}) with --resume true. Nothing was changed."
    )
    with pytest.raises(ConfigError, match=r"\(batch_size: 4 -> 2, iterations: 10 -> 11, learning_rate: 0\.05 -> 0\.1, "
                       r"seed: 0 -> 3\)\. Pass"):  # four differences: all shown
        train(_args(tmp_path, learning_rate=0.1, seed=3, batch_size=2, iterations=11))
    with pytest.raises(ConfigError, match=r"\(batch_size: 4 -> 2, iterations: 10 -> 11, learning_rate: 0\.05 -> 0\.1, "
                       r"seed: 0 -> 3, \.\.\.\)\. Pass"):
        train(_args(tmp_path, learning_rate=0.1, seed=3, batch_size=2, iterations=11, warmup_iterations=1))
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == before  # nothing was changed
    (tmp_path / "run" / "train_config.json").unlink()
    with pytest.raises(ConfigError, match="already holds a run whose settings were not recorded"):
        train(_args(tmp_path))


def test_a_run_trained_but_not_exported_is_recognised(tmp_path, toy):
    args = _args(tmp_path, iterations=3, stop_after=None)
    with pytest.raises(AttributeError):  # the toy model cannot be exported: the run dies after its last checkpoint
        train(args)
    assert toy.calls["evaluate"] == [None]
    with pytest.raises(ConfigError, match="holds this run, trained but not exported"):
        train(args)


def test_export_writes_the_folder_in_place_then_pushes_it(tmp_path, monkeypatch):
    """export_model's own wiring: the folder (written by write_model_folder with the method's card info) lands at
    <output_dir>/model, and push_to_hub uploads that folder to hub_model_id (a stand-in Hub client)."""
    import huggingface_hub

    from hf_sbir.training import trainer
    from test_training_loop import _FakeHub

    written = []

    def write(folder, model, transform, args, result, card_info=None, adapter=None):
        written.append((folder.name, model, transform, card_info, adapter))
        (folder / "config.json").write_text("{}")

    monkeypatch.setattr(trainer, "write_model_folder", write)
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeHub)
    _FakeHub.calls, _FakeHub.fail_with = [], None
    args = _args(tmp_path, push_to_hub=True, hub_model_id="me/toy")
    result = trainer.TrainResult(output_dir=tmp_path / "run", model_dir=None, iterations_done=10, finished=True)
    folder = trainer.export_model("MODEL", "TRANSFORM", args, result, card_info={"task_name": "toy"})
    assert folder == tmp_path / "run" / "model" and (folder / "config.json").is_file()
    assert written == [("model", "MODEL", "TRANSFORM", {"task_name": "toy"}, None)]
    assert _FakeHub.calls[-1] == ("upload_folder", {"folder_path": str(folder), "repo_id": "me/toy", "commit_message": "Upload hf-sbir model"})
    _FakeHub.calls = []
    trainer.export_model("MODEL", "TRANSFORM", _args(tmp_path), result, adapter="PEFT MODEL")  # push_to_hub off: nothing uploaded
    assert _FakeHub.calls == [] and written[-1][3] is None and written[-1][4] == "PEFT MODEL"  # --peft: its adapter too


def test_logged_values_are_averaged_over_processes(monkeypatch):
    """Under data parallelism each process logs its share's values; what is logged is their mean over
    processes (a stand-in accelerator of 2 processes whose other process logged `other`)."""
    from hf_sbir.training.trainer import _mean_over_processes

    other = {"loss": 3.0, "acc": 0.0}

    class TwoProcesses:
        num_processes, device = 2, torch.device("cpu")

        def reduce(self, values, reduction):
            assert reduction == "mean" and values.dtype == torch.float64
            return (values + torch.tensor([other[k] for k in sorted(other)], dtype=torch.float64)) / 2

    assert _mean_over_processes(TwoProcesses(), {"loss": 1.0, "acc": np.float32(0.5)}) == {"acc": 0.25, "loss": 2.0}
    assert _mean_over_processes(TwoProcesses(), {}) == {}

    class OneProcess:
        num_processes = 1

    logs = {"loss": 1.5}
    assert _mean_over_processes(OneProcess(), logs) is logs

    class OnAGpu(TwoProcesses):
        device = torch.device("meta")  # stands in for a GPU: NCCL reduces only tensors on the process's device

        def reduce(self, values, reduction):
            assert values.device == self.device and values.dtype == torch.float64
            return torch.tensor([0.25, 2.0], dtype=torch.float64)  # (meta tensors hold no values)

    assert _mean_over_processes(OnAGpu(), {"loss": 1.0, "acc": 0.5}) == {"acc": 0.25, "loss": 2.0}


def test_model_folder_gets_the_methods_card_info(tmp_path, monkeypatch):
    """write_model_folder saves the model, the inference transform and its image processor, then the card
    with the method's `model_card_info()` (stand-ins for the model and transform: the real ones are
    exported in test_training.py and test_methods_train_entry.py)."""
    import hf_sbir.training.model_card as model_card
    from hf_sbir.training import trainer

    saved, cards = [], []

    class Saves:
        def __init__(self, name, file):
            self.name, self.file = name, file

        def save_pretrained(self, folder):
            saved.append(self.name)
            (folder / self.file).write_text("{}")

    class Transform(Saves):
        def for_inference(self):
            return Transform("inference transform", "sbir_image_transform.json")

        def to_image_processor(self):
            return Saves("image processor", "preprocessor_config.json")

    monkeypatch.setattr(model_card, "write_model_card", lambda folder, args, result, info=None: cards.append(info))
    result = trainer.TrainResult(output_dir=tmp_path, model_dir=None, iterations_done=1, finished=True)
    trainer.write_model_folder(tmp_path, Saves("model", "config.json"), Transform("training transform", "x.json"), None, result,
                               card_info={"task_name": "toy"})
    assert saved == ["model", "inference transform", "image processor"] and cards == [{"task_name": "toy"}]
    assert not (tmp_path / "adapter").exists()  # no peft adapter given: no adapter/ folder

    # With --peft the peft adapter goes to adapter/ (a subfolder: see write_model_folder); its weights come from
    # a temporary file (mode 600) and get the mode of config.json, the folder keeps a folder's mode.
    adapters = []

    def write_adapter(adapter, folder):
        adapters.append((adapter, folder))
        folder.mkdir(mode=0o755)
        (folder / "adapter_model.safetensors").write_text("weights")
        (folder / "adapter_model.safetensors").chmod(0o600)

    monkeypatch.setattr(trainer, "write_adapter_folder", write_adapter)
    out = tmp_path / "with_adapter"
    out.mkdir()
    trainer.write_model_folder(out, Saves("model", "config.json"), Transform("training transform", "x.json"), None, result,
                               adapter="PEFT MODEL")
    assert adapters == [("PEFT MODEL", out / "adapter")]
    config_mode = (out / "config.json").stat().st_mode & 0o777
    assert (out / "adapter" / "adapter_model.safetensors").stat().st_mode & 0o777 == config_mode != 0o600
    assert (out / "adapter").stat().st_mode & 0o777 == 0o755


def test_jsonl_tracker_on_its_own_makes_its_folder_on_first_write(tmp_path):
    """JsonlTracker is an accelerate tracker a user can pass to their own Accelerator: it makes its (nested)
    logging folder when it first writes, not before; config.json holds the run settings one per line, with
    values JSON cannot hold (paths) as text."""
    from pathlib import Path

    from hf_sbir.training.trainer import JsonlTracker

    logs = tmp_path / "runs" / "exp" / "logs"
    tracker = JsonlTracker("exp", logs)
    assert tracker.run_name == "exp" and tracker.tracker == logs / "metrics.jsonl" and not (tmp_path / "runs").exists()
    tracker.log({"loss": np.float32(0.5)}, step=3)
    assert json.loads((logs / "metrics.jsonl").read_text())["loss"] == 0.5
    other = JsonlTracker("exp", tmp_path / "other" / "logs")
    other.store_init_configuration({"output_dir": Path("/data/run"), "learning_rate": 0.1})
    text = (tmp_path / "other" / "logs" / "config.json").read_text()
    assert json.loads(text) == {"output_dir": "/data/run", "learning_rate": 0.1}
    assert text.splitlines() == ["{", '  "output_dir": "/data/run",', '  "learning_rate": 0.1', "}"]


def test_load_data_is_the_zero_shot_split_of_the_settings(tmp_path):
    from hf_sbir.training.method import load_zero_shot_data
    from hf_sbir.training.trainer import load_data

    args = _args(tmp_path, dataset="embedded", split="embedded")
    data, expected = load_data(args), load_zero_shot_data(args)
    assert type(data) is type(expected) and repr(data) == repr(expected)


def test_only_a_machine_without_any_accelerator_trains_on_the_cpu(monkeypatch):
    """accelerate is told `cpu=True` only where torch sees no accelerator of any kind: a Mac's MPS or an Intel
    XPU (no CUDA) must keep its device (stand-ins for torch's probes)."""
    from hf_sbir.training.trainer import _cpu_only_machine

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    assert _cpu_only_machine() is False
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # (torch.accelerator covers CUDA too)
    assert _cpu_only_machine() is True


def test_peft_settings_reach_the_model(tmp_path, toy):
    """--peft adapts the method's model before training (the toy has no backbone: the one-line error, before
    anything is written)."""
    with pytest.raises(ConfigError, match=r"^Sequential has no `backbone` for peft to adapt\.$"):
        train(_args(tmp_path, peft="lora"))
    assert not (tmp_path / "run").exists()


def test_mixed_precision_and_accelerates_own_trackers_follow_the_settings(tmp_path, toy, monkeypatch):
    """--mixed_precision bf16: the model's forward runs in bfloat16 (accelerate's autocast); --log_with
    tensorboard: accelerate's tracker writes under <output_dir>/logs. accelerate keeps one process-wide state
    whose precision cannot change once set, so the test starts and leaves it fresh."""
    from accelerate.state import AcceleratorState

    pytest.importorskip("tensorboard")
    dtypes = []
    monkeypatch.setattr(_Toy, "build_model", lambda self: _RecordsDtype(dtypes))
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        train(_args(tmp_path, log_with="tensorboard", mixed_precision="bf16", stop_after=1))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert list((tmp_path / "run" / "logs" / "hf_sbir").glob("events.out.tfevents.*"))


class _RecordsDtype(nn.Sequential):
    def __init__(self, dtypes):
        super().__init__(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
        self.dtypes = dtypes

    def forward(self, x):
        out = super().forward(x)
        self.dtypes.append(out.dtype)
        return out.float()


def test_accelerate_steps_nothing_itself_and_is_told_about_a_cpu_only_machine(tmp_path, toy, monkeypatch):
    """Only visible with several processes, so checked on what train asks of accelerate: the loop steps the
    scheduler once per optimiser step itself (accelerate's default would step it once per process, running the
    schedule N times too fast), and on a machine without accelerator accelerate is told `cpu=True` (without it,
    processes started by torchrun form no CPU process group and each trains alone)."""
    from hf_sbir.training import trainer

    asked = []

    class Recorded(trainer.Accelerator):
        def __init__(self, **kwargs):
            asked.append(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setattr(trainer, "Accelerator", Recorded)
    train(_args(tmp_path, stop_after=1))
    assert asked[0]["step_scheduler_with_optimizer"] is False and asked[0]["cpu"] is trainer._cpu_only_machine()


@pytest.mark.parametrize("rank", [0, 1])
def test_each_process_trains_on_its_own_share_of_the_global_batch(tmp_path, toy, monkeypatch, rank):
    """Under data parallelism (a stand-in accelerator that reports process `rank` of 2) each process trains on
    its share of every step's global batch of 2 x batch_size items."""
    from hf_sbir.training import trainer

    class OneOfTwo(trainer.Accelerator):
        num_processes, process_index = 2, rank

    monkeypatch.setattr(trainer, "Accelerator", OneOfTwo)
    train(_args(tmp_path, stop_after=2))
    assert toy.calls["rows"] == [list(range(8 * step + 4 * rank, 8 * step + 4 * rank + 4)) for step in (0, 1)]
