#!/usr/bin/env python
"""Train an hf-sbir model.

    python train.py                                   # Sketch-an-Anchor on the embedded default data, paper recipe
    python train.py --config configs/quickstart.yaml  # the README Quickstart (CPU, minutes)
    python train.py --config configs/fg_sbir_cpu.yaml # other methods: configs/<method>.yaml (paper recipe),
                                                      # configs/<method>_cpu.yaml (offline, CPU, minutes)
    accelerate launch train.py --config my.yaml       # multi-GPU / mixed precision, same code
    python train.py --config my.yaml --resume true    # continue a stopped run from its last checkpoint

Every `hf_sbir.training.TrainConfig` field is a flag (`python train.py --help`).
"""

import logging
import sys

from hf_sbir.training import config_from_args, train
from hf_sbir.training.evaluation import format_metric_table


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = config_from_args(argv)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = train(args)
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
        print(f"\nModel saved to {result.model_dir} (load with AutoModel.from_pretrained).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
