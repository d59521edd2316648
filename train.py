#!/usr/bin/env python
"""Train an hf-sbir model.

    python train.py                                   # Sketch-an-Anchor on the embedded default data, paper recipe
    python train.py --config configs/quickstart.yaml  # the README Quickstart (CPU, minutes)
    python train.py --config configs/fg_sbir_cpu.yaml # other methods: configs/<method>.yaml (paper recipe),
                                                      # configs/<method>_cpu.yaml (offline, CPU, minutes)
    accelerate launch train.py --config my.yaml       # multi-GPU / mixed precision, same code
    python train.py --config my.yaml --resume true    # continue a stopped run from its last checkpoint

Every `hf_sbir.training.TrainConfig` field is a flag (`python train.py --help`). A wrong setting or input
(config value, method_args, dataset folder or layout, an output folder holding another run) ends with one
line saying what to do and exit code 2, before anything is written.
"""

import logging
import sys

from hf_sbir.training import config_from_args, train
from hf_sbir.training.checkpointing import CheckpointError, ResumeMismatchError
from hf_sbir.training.config import ConfigError
from hf_sbir.retrieval.evaluation import format_metric_table
from hf_sbir.training.model_card import format_layer_sweep


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # accelerate logs five INFO lines per checkpoint (state, weights, optimiser, scheduler, RNG); the loop's
    # own line says where each checkpoint went.
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    try:
        args = config_from_args(argv)
    except (ConfigError, FileNotFoundError) as err:  # a wrong setting, or no such --config file
        print(f"error: {err}", file=sys.stderr)
        return 2
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with logging_redirect_tqdm():  # log lines (e.g. each checkpoint) above the progress bar, not inside it
            result = train(args)  # user errors surface as ConfigError, before any work (or file) is done
    except (ConfigError, ResumeMismatchError, CheckpointError) as err:  # each says what to do, in one line
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result.already_finished:
        print(
            f"{args.output_dir} already holds this run, finished with the same settings: its saved results are below "
            f"(nothing was retrained). To train again, pass a new --output_dir or delete {args.output_dir}."
        )
    if not result.finished:
        print(f"Stopped after {result.iterations_done}/{args.iterations} iterations; resume with --resume true.")
        return 0
    if result.metrics_after is not None:
        columns = {"before fine-tuning": result.metrics_before, "after": result.metrics_after}
        # Each method reports its own metrics (mAP/P@k for zero-shot retrieval, Acc@k for instance-level).
        keys = [k for k, v in result.metrics_after["metrics"].items() if isinstance(v, (int, float))]
        if args.split and "map@all" in keys:
            print(f"\nZero-shot retrieval on the unseen classes of {args.dataset} ({args.split}), in %:\n")
        else:
            task = result.metrics_after.get("task") or "evaluation"
            print(f"\n{task[0].upper()}{task[1:]}, in %:\n")
        print(format_metric_table({k: v for k, v in columns.items() if v is not None}, keys=keys))
        sweep = format_layer_sweep(result.metrics_before, result.metrics_after)
        if sweep:  # shape views: Acc@k of every encoder layer, the method's main result
            print(f"\nLayer sweep (* = the model's feature layer), in %:\n\n{sweep}")
        print(f"\nModel saved to {result.model_dir} (load with AutoModel.from_pretrained).")
        if args.peft:
            print(
                f"Its {args.peft} adapter (peft format) is in {result.model_dir}/adapter: "
                "PeftModel.from_pretrained(base, folder), base from hf_sbir.training.peft.base_model_for_adapter(folder)."
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
