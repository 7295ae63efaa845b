"""``from segbook.train import fit, evaluate, predict, ...``: the training tools in one place, and the command line.

The chapters import from here. Each tool lives in a module named for it, so a
reader who wants to see how it works knows where to look:

* :mod:`segbook.loop`: ``fit``, the training loop, and ``poly_schedule``;
* :mod:`segbook.optim`: ``param_groups_weight_decay``, no weight decay on norms and biases;
* :mod:`segbook.losses`: ``segmentation_loss`` and each model's own loss;
* :mod:`segbook.evaluation`: ``evaluate``, one image per forward pass;
* :mod:`segbook.checkpoints`: atomic files, ``save_checkpoint``/``load_checkpoint``, resume;
* :mod:`segbook.rng`: the random streams a resumed run must put back;
* :mod:`segbook.distributed`: what changes under ``torchrun``;
* :mod:`segbook.inference`: ``predict``, with sliding windows;
* :mod:`segbook.cli`: ``python -m segbook.train`` (``main``).

This module sits above all of them, the command line included, and none
imports it back: the imports of the package go one way.
"""
from __future__ import annotations

from .checkpoints import load_checkpoint, save_checkpoint
from .cli import main
from .evaluation import evaluate
from .inference import predict, predict_logits, sliding_windows
from .losses import model_loss, segmentation_loss
from .loop import TrainingDiverged, fit, poly_schedule
from .optim import param_groups_weight_decay

__all__ = [
    "TrainingDiverged", "segmentation_loss", "model_loss", "fit", "evaluate", "predict", "predict_logits",
    "sliding_windows", "poly_schedule", "param_groups_weight_decay", "load_checkpoint", "save_checkpoint", "main",
]

if __name__ == "__main__":
    raise SystemExit(main())
