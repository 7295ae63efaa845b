"""Training, evaluation and inference: ``from segbook.train import fit, evaluate, predict``.

One module a concern: ``loop``, ``evaluation``, ``predict``, ``checkpoints``, ``distributed`` (all that changes
under ``torchrun``), ``runtime`` (precision, memory layout, bars), ``cli`` (``segbook-train``) and ``ddp_check``.
The model's loss belongs to the model (:func:`segbook.models.base.model_loss`); it is re-exported here.
"""
from __future__ import annotations

from ..models.base import model_loss, segmentation_loss
from .checkpoints import chapter_checkpoint_dir, load_checkpoint, save_checkpoint
from .distributed import Processes
from .evaluation import evaluate
from .loop import TrainingDiverged, fit, param_groups_weight_decay, poly_schedule, train_one_epoch
from .predict import predict, predict_logits, sliding_windows

__all__ = ["Processes", "TrainingDiverged", "chapter_checkpoint_dir", "evaluate", "fit", "load_checkpoint",
           "model_loss", "param_groups_weight_decay", "poly_schedule", "predict", "predict_logits", "save_checkpoint",
           "segmentation_loss", "sliding_windows", "train_one_epoch"]
