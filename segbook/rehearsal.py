"""A rehearsal of the full profile on a CPU: its settings as written, its loops cut short.

The full profile (real VOC2012 at real sizes, ImageNet weights, ResNet-50/101,
mixed precision, checkpoints) normally runs only on a GPU, so a mistake in a
``pick(full=...)`` line would first show on a reader's Colab. ``SEGBOOK_REHEARSAL=1``
runs it on the CPU instead: every full setting is used as written (sizes,
crops, backbones, batch sizes, the schedule's length), but

* the "no CUDA GPU" check that would downgrade the profile is relaxed;
* ``fit`` trains at most :data:`EPOCHS` epochs of at most :data:`STEPS_PER_EPOCH`
  steps each (the poly schedule is still laid out for the full run), and
  ``evaluate`` scores at most :data:`IMAGES` images;
* ``SEGBOOK_REHEARSAL_BATCH=N``, when set, cuts the training batch to N (CI uses
  it to fit its time budget; it says so);
* the lines a CUDA run takes are taken on the CPU where they can be: autocast
  (bfloat16, where CUDA would use float16), the GradScaler, channels-last;
* in a notebook, an ``assert`` that fails does not stop the chapter: it prints
  ``rehearsal: skipped check: <the assert>`` (two steps of training cannot clear
  a bar written for a trained model), and ``tools/rehearse.py`` compares the
  skipped checks with the list of those expected to fail.

Each of these says so in one line. A rehearsal proves that the full branch
runs; it produces no number anyone should quote. ``tools/make_rehearsal_data.py``
writes the VOC-shaped data and the stand-in ImageNet weights it runs on.
"""
from __future__ import annotations

import ast
import os

__all__ = ["EPOCHS", "IMAGES", "SKIPPED", "STEPS_PER_EPOCH", "active", "announce", "batch_size", "limit", "relax_asserts",
           "skipped_check"]

EPOCHS = 2           # fit stops after this many epochs ...
STEPS_PER_EPOCH = 1  # ... of this many steps each: two optimiser steps, two checkpoints, two validations
IMAGES = 2           # evaluate scores this many validation images
SKIPPED_PREFIX = "rehearsal: skipped check: "
SKIPPED: list[str] = []  # the checks skipped in this process, in order

_said: set[str] = set()


def active() -> bool:
    """True when ``SEGBOOK_REHEARSAL`` is set to something other than 0/false/no."""
    return os.environ.get("SEGBOOK_REHEARSAL", "").strip().lower() not in ("", "0", "false", "no")


def announce(key: str, line: str) -> None:
    """Print ``rehearsal: <line>`` once per process for each ``key``."""
    if key not in _said:
        _said.add(key)
        print(f"rehearsal: {line}")


_CAPS = {"epochs": EPOCHS, "steps": STEPS_PER_EPOCH, "images": IMAGES}
_SAY = {"epochs": "fit stops after {cap} of its {planned} epochs",
        "steps": "each epoch stops after {cap} of its {planned} steps (the schedule is laid out for all of them)",
        "images": "evaluate stops after {cap} images"}


def limit(what: str, planned: int | None = None) -> int | None:
    """How many ``epochs``, ``steps`` (per epoch) or ``images`` a loop may run: None (no cap) outside a rehearsal."""
    if not active():
        return None
    cap = _CAPS[what]
    if planned is None or planned > cap:
        announce(what, _SAY[what].format(cap=cap, planned=planned))
    return cap


def batch_size(planned: int) -> int:
    """The training batch: as written, unless ``SEGBOOK_REHEARSAL_BATCH`` caps it in a rehearsal (said loudly)."""
    cap = os.environ.get("SEGBOOK_REHEARSAL_BATCH", "").strip()
    if not active() or not cap:
        return planned
    try:
        cap_value = int(cap)
    except ValueError:
        raise ValueError(f"SEGBOOK_REHEARSAL_BATCH={cap!r} is not a whole number; set it to e.g. 2, "
                         "or unset it to train at the batch size as written.") from None
    if planned > cap_value:
        announce("batch", f"the training batch is cut from {planned} to {cap_value} (SEGBOOK_REHEARSAL_BATCH): "
                 "sizes and models as written, the batch not")
    return min(planned, cap_value)


def skipped_check(source: str) -> None:
    """Called instead of raising when a notebook's ``assert`` fails in a rehearsal."""
    SKIPPED.append(source)
    print(SKIPPED_PREFIX + " ".join(source.split()))


class _AssertToCheck(ast.NodeTransformer):
    """``assert test, msg`` -> ``if not (test): skipped_check("assert test")``; the message is dropped."""

    def __init__(self, text: str) -> None:
        self.text = text

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        source = ast.get_source_segment(self.text, node) or ast.unparse(node)
        call = ast.parse(f"__import__('segbook.rehearsal').rehearsal.skipped_check({source!r})").body[0]
        new = ast.If(test=ast.UnaryOp(op=ast.Not(), operand=node.test), body=[call], orelse=[])
        return ast.copy_location(ast.fix_missing_locations(new), node)


class _RelaxAsserts:
    """An IPython input transformer pair: source text kept, then the AST rewritten."""

    def __init__(self) -> None:
        self.text = ""

    def remember(self, lines: list[str]) -> list[str]:
        self.text = "".join(lines)
        return lines

    def visit(self, tree: ast.AST) -> ast.AST:
        return _AssertToCheck(self.text).visit(tree)


def relax_asserts(shell) -> bool:
    """Make a failing ``assert`` in the cells ``shell`` runs from now on print a skipped check; True if installed.

    Only a rehearsal calls this (from :func:`segbook.env.setup`). Outside IPython
    there are no cells to rewrite and nothing is done.
    """
    if shell is None or not hasattr(shell, "ast_transformers"):
        return False
    if any(isinstance(t, _AssertToCheck) or getattr(t, "_segbook_rehearsal", False)
           for t in shell.ast_transformers):
        return True
    relax = _RelaxAsserts()

    class Transformer(ast.NodeTransformer):
        _segbook_rehearsal = True

        def visit(self, tree):
            return relax.visit(tree)

    shell.input_transformers_post.append(relax.remember)
    shell.ast_transformers.append(Transformer())
    announce("asserts", "an assert that fails prints 'rehearsal: skipped check: ...' and the chapter goes on")
    return True
