"""The training loop behind `train.py` (`accelerate launch train.py --config ...`)."""

from hf_sbir.training.config import ConfigError, TrainConfig, config_from_args
from hf_sbir.training.method import TrainingMethod
from hf_sbir.training.trainer import TrainResult, list_checkpoints, train

__all__ = ["ConfigError", "TrainConfig", "TrainResult", "TrainingMethod", "config_from_args", "list_checkpoints", "train"]
