"""Mutation testing of the flagship's core, one module at a time, each against the tests that own it.

    python tools/mutation.py sampler                 # one module (names: python tools/mutation.py --list)
    python tools/mutation.py all                     # every module in turn (hours on 2 cores)
    python tools/mutation.py sampler --report        # the score of what has run, without running more

mutmut (>= 3.8, the `dev` extra) copies the package, plants one small bug ("mutant") at a time and runs
the tests; a mutant no test notices "survived". mutmut reads its settings from `[tool.mutmut]` in
pyproject.toml, and its test selection is one list, so running a module against *its* tests needs its own
settings: this script gives each module a work folder (`mutants-work/<module>/`, ignored by git) holding a
copy of the tree and a pyproject.toml whose `[tool.mutmut]` names that module and its tests. Work folders
persist, so a stopped run continues and a rerun only retries what changed (`mutmut run` semantics).

Score = killed / checked mutants; "no tests", "survived" and "suspicious" count against it, timeouts and
crashes count as killed (the planted bug made the tests hang or die, which a user would notice). See TESTING.md for the figures.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "mutants-work"

# module name -> (files to mutate, tests that own them)
MODULES = {
    # The gathered-loss tests (two spawned processes) are what tells gathering from not gathering.
    "losses_sketch_an_anchor": (
        ["hf_sbir/losses/sketch_an_anchor.py"],
        ["tests/test_losses.py", "tests/test_distributed.py::test_each_familys_loss_gathered_over_two_processes_equals_one_process"],
    ),
    "losses_adapt_align": (["hf_sbir/losses/adapt_align.py"], ["tests/test_adapt_align.py"]),
    # L_KD gathers the global batch: only the two-process test tells gathering (the default) from not.
    "losses_fg_sbir": (
        ["hf_sbir/losses/fg_sbir.py"],
        ["tests/test_fg_sbir.py", "tests/test_distributed.py::test_each_familys_loss_gathered_over_two_processes_equals_one_process[fg_sbir]"],
    ),
    "losses_shape_views": (["hf_sbir/losses/shape_views.py"], ["tests/test_shape_views.py"]),
    "anchors": (
        ["hf_sbir/anchors/semantic_anchors.py", "hf_sbir/anchors/gcn.py"],
        ["tests/test_semantic_anchors.py", "tests/test_sketch_an_anchor_model.py", "tests/test_training_loop.py::test_step_targets_come_from_the_input_anchors_not_the_adapted_ones"],
    ),
    "metrics": (["hf_sbir/metrics/*"], ["tests/test_metrics.py", "tests/test_metrics_protocols.py"]),
    "sampler": (["hf_sbir/data/sampler.py"], ["tests/test_data_sampler.py"]),
    # Of test_faults.py only the leak-guard tests: its other tests train models (minutes per surviving mutant).
    "zero_shot": (
        ["hf_sbir/data/zero_shot.py"],
        ["tests/test_data_splits.py", "tests/test_faults.py::test_leak_guard_catches_spelling_variants",
         "tests/test_faults.py::test_leak_guard_flags_near_duplicates_and_passes_distinct_classes"],
    ),
    # The loop's own behaviours on a toy method (test_trainer.py, seconds) and the fast loop tests; of the
    # end-to-end runs with real models only the export (test_training.py's own slow tests and the four
    # families' resume runs test the models and checkpointing, and cost minutes per surviving mutant).
    "trainer": (
        ["hf_sbir/training/trainer.py"],
        [
            "tests/test_trainer.py", "tests/test_training_loop.py",
            "tests/test_training.py::test_exported_folder_loads_and_card_carries_metrics",
            "tests/test_training.py::test_push_to_hub_offline_is_a_clear_error",
            "tests/test_training.py::test_train_py_user_errors_are_one_line_before_any_work",
        ],
    ),
    "losses_distributed": (
        ["hf_sbir/losses/distributed.py"],
        ["tests/test_losses.py", "tests/test_distributed.py::test_each_familys_loss_gathered_over_two_processes_equals_one_process",
         "tests/test_distributed.py::test_without_gathering_the_in_batch_negatives_would_differ"],
    ),
    "model": (
        ["hf_sbir/models/sketch_an_anchor/*"],
        ["tests/test_sketch_an_anchor_model.py", "tests/test_losses.py", "tests/test_training_loop.py::test_step_targets_come_from_the_input_anchors_not_the_adapted_ones"],
    ),
}
# Tests that run the package in a subprocess (train.py, the trust_remote_code bundle with the package
# blocked): outside mutmut's process, ~1 minute each on 2 cores; the in-process tests cover the same code.
DESELECT = [
    "tests/test_sketch_an_anchor_model.py::test_trust_remote_code_route_without_the_package",
    "tests/test_training.py::test_train_py_reports_bad_config_without_traceback",
    "tests/test_training.py::test_train_py_missing_dataset_is_one_line_and_leaves_nothing_behind",
    "tests/test_training.py::test_train_py_rerun_of_a_finished_run_shows_its_results",
]
# Slow tests left out of one module's run (its fast tests cover the same behaviour of that module).
DESELECT_FOR = {
    "trainer": ["tests/test_training_loop.py::test_resume_with_dropout_gives_the_weights_of_an_uninterrupted_run"],
}
COPY = ["hf_sbir", "tests", "model_cards", "configs", "spaces", "train.py"]
# mutmut statuses that mean a test noticed the planted bug (a hang or a crash is noticed too).
KILLED = ("killed", "timeout", "segfault", "caught by type check")


def _toml_list(items) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def prepare(name: str, timeout_multiplier: float | None = None) -> Path:
    files, tests = MODULES[name]
    work = WORK / name
    work.mkdir(parents=True, exist_ok=True)
    for item in COPY:  # refresh the sources; mutmut re-checks only functions whose code changed
        src, dst = ROOT / item, work / item
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    deselect = [a for t in DESELECT + DESELECT_FOR.get(name, []) if any(t.startswith(x.split("::")[0]) for x in tests) for a in ("--deselect", t)]
    (work / "pyproject.toml").write_text(
        "[tool.mutmut]\n"
        'source_paths = ["hf_sbir/"]\n'
        f"only_mutate = {_toml_list(files)}\n"
        f"pytest_add_cli_args_test_selection = {_toml_list(tests)}\n"
        f"pytest_add_cli_args = {_toml_list(['-p', 'no:cacheprovider', *deselect])}\n"
        'also_copy = ["model_cards/", "configs/", "spaces/", "train.py"]\n'
        # (mutmut re-judges only the timed-out mutants when this changes)
        + (f"timeout_multiplier = {timeout_multiplier}\n" if timeout_multiplier else "")
    )
    return work


def report(name: str, quiet: bool = False) -> dict:
    from mutmut.stats import status_by_exit_code

    files, _ = MODULES[name]
    counts: dict[str, int] = {}
    survivors = []
    for meta in sorted((WORK / name / "mutants").rglob("*.py.meta")):
        rel = str(meta.relative_to(WORK / name / "mutants"))[: -len(".meta")]
        if not any(fnmatch.fnmatch(rel, f) for f in files):  # mutmut's own matching ("*" spans folders)
            continue
        for key, code in json.loads(meta.read_text()).get("exit_code_by_key", {}).items():
            status = status_by_exit_code[code]
            counts[status] = counts.get(status, 0) + 1
            if status not in KILLED and status != "not checked":
                survivors.append(f"{status}: {key}")
    total = sum(counts.values())
    checked = total - counts.get("not checked", 0)
    killed = sum(counts.get(k, 0) for k in KILLED)
    score = killed / checked if checked else float("nan")
    if not quiet:
        print(f"{name}: {killed}/{checked} killed ({100 * score:.1f}%), of {total} mutants; {counts}")
    return {"module": name, "killed": killed, "checked": checked, "total": total, "counts": counts, "survivors": survivors}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module", nargs="?", help=f"one of {sorted(MODULES)} or 'all'")
    parser.add_argument("--list", action="store_true", help="list the modules and their tests")
    parser.add_argument("--report", action="store_true", help="print the score of what has run; run nothing")
    parser.add_argument("--survivors", action="store_true", help="also list surviving / untested mutants")
    parser.add_argument("--rerun-survivors", action="store_true", help="retry only the mutants that survived (after adding tests)")
    parser.add_argument("--max-children", default="1", help="parallel mutmut workers (default 1)")
    parser.add_argument(
        "--timeout-multiplier", type=float, default=None,
        help="mutmut's timeout_multiplier (its default 15): a mutant times out after (clean test time + 1 s) x this "
        "(wall clock); raise it on a loaded machine for the modules whose tests spawn processes",
    )
    args = parser.parse_args(argv)
    if args.list or not args.module:
        for name, (files, tests) in MODULES.items():
            print(f"{name}: {' '.join(files)}  <-  {' '.join(tests)}")
        return 0
    names = sorted(MODULES) if args.module == "all" else [args.module]
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        parser.error(f"unknown module {unknown[0]!r}; choose from {sorted(MODULES)} or 'all'")
    for name in names:
        if not args.report:  # (a report never touches a work folder: a run may be using it)
            work = prepare(name, args.timeout_multiplier)
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # mutmut puts its copy first
            env.setdefault("OMP_NUM_THREADS", "1")
            # mutmut keeps earlier verdicts; survivors are retried only when named.
            retry = [s.split(": ", 1)[1] for s in report(name, quiet=True)["survivors"]] if args.rerun_survivors else []
            if args.rerun_survivors and not retry:
                print(f"{name}: no survivors to retry")
            else:
                subprocess.run(["mutmut", "run", "--max-children", args.max_children, *retry], cwd=work, env=env, check=False)
        result = report(name)
        if args.survivors:
            print("\n".join(result["survivors"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
