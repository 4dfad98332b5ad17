"""Training built-in networks on built-in tasks: the engine behind ``etprop train``."""

from etprop.errors import CheckpointError
from etprop.experiment.checkpoint import legacy_note, load_checkpoint, read_meta, save_checkpoint
from etprop.experiment.models import MODELS, build_model
from etprop.experiment.runner import ALGOS, Run, TrainConfig, train

__all__ = ["train", "TrainConfig", "Run", "ALGOS", "MODELS", "build_model", "save_checkpoint", "load_checkpoint",
           "read_meta", "legacy_note", "CheckpointError"]
