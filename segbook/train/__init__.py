"""Training, evaluation and inference: ``from segbook.train import fit, evaluate, predict``.

One package, one module a tool, so a reader who wants to see how one works knows where to look:

* :mod:`~segbook.train.loop`: ``fit`` (the loop of chapter 3), ``train_one_epoch``, the learning-rate
  schedule and ``param_groups_weight_decay``;
* :mod:`~segbook.train.evaluation`: ``evaluate``, every validation image alone at its own size;
* :mod:`~segbook.train.predict`: ``predict``, with sliding windows for large images;
* :mod:`~segbook.train.checkpoints`: atomic files, ``Checkpoints`` (last, best, resume) and the random streams;
* :mod:`~segbook.train.distributed`: ``Processes``, all that changes under ``torchrun``;
* :mod:`~segbook.train.runtime`: mixed precision, channels-last, progress bars;
* :mod:`~segbook.train.cli`: ``python -m segbook.train`` / ``segbook-train``;
  :mod:`~segbook.train.ddp_check`: a few steps under torchrun, each process saying what it did.

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
