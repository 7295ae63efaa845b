"""The kernel start-up file of a rehearsal: the full profile's settings on the CPU, every loop cut short.

``tools/rehearse.py`` installs this file as an IPython start-up script of the
kernel that runs a chapter, so it runs before the chapter's first cell. It
drives segbook through its public arguments only; segbook itself knows nothing
of rehearsals:

* ``segbook.setup`` grants the full profile on the CPU (VOC2012 must still be
  found, at ``SEGBOOK_VOC_ROOT``: the VOC-shaped set of ``make_rehearsal_data.py``);
* ``fit`` trains at most :data:`EPOCHS` epochs of :data:`STEPS_PER_EPOCH` steps
  (``epochs=``, ``max_steps_per_epoch=``; a warm-up keeps its share of the
  shorter schedule), and it and ``evaluate`` score at most
  :data:`IMAGES` images (``max_val_images=``, ``max_images=``);
* where a chapter leaves them to the default, ``fit`` and ``evaluate`` take
  CUDA's lines on the CPU: autocast (bfloat16, where CUDA would use float16) and
  channels-last tensors;
* ``SEGBOOK_REHEARSAL_BATCH=N`` (``rehearse.py --batch N``) cuts every training
  batch to N (CI's time budget);
* an ``assert`` that fails prints ``rehearsal: skipped check: <the assert>``
  instead of stopping the chapter (two steps of training cannot clear a bar
  written for a trained model); ``rehearse.py`` compares those with the list of
  checks each chapter may skip (``tools/rehearsal_checks.json``).

Each of these says so in one line, once. A rehearsal proves that the full
branch runs; it produces no number anyone should quote.
"""
import ast
import functools
import os
import sys

import torch

import segbook
import segbook.data
import segbook.env
import segbook.train
import segbook.train.loop

EPOCHS, STEPS_PER_EPOCH, IMAGES = 2, 1, 2
SKIPPED_PREFIX = "rehearsal: skipped check: "
_said: set[str] = set()


def _announce(key: str, line: str) -> None:
    if key not in _said:
        _said.add(key)
        print(f"rehearsal: {line}")


def _setup(seed: int = 0, profile=None, download_voc: bool = False, *, verbose: bool = True):
    if not segbook.env.real_voc_available():  # the reader's fallback, loud; rehearse.py fails on it
        return _ORIGINAL["setup"](seed, profile, download_voc, verbose=verbose)
    _announce("profile", "the full profile's settings on the CPU, every loop cut to a few steps; "
              "this is a rehearsal, not a result")
    env = segbook.env.Setup("full", torch.device("cpu"), segbook.env.seed_everything(seed))
    segbook.env.quiet_notebook()
    if verbose:
        print(env)
    return env


def _fit(*args, epochs: int, **kwargs):
    if epochs > EPOCHS:
        _announce("epochs", f"fit stops after {EPOCHS} of its {epochs} epochs")
        if kwargs.get("warmup_steps"):  # the same share of the shorter schedule (it must end before the run)
            kwargs["warmup_steps"] = kwargs["warmup_steps"] * EPOCHS // epochs
            _announce("warmup", f"the warm-up shrinks with the schedule, to {kwargs['warmup_steps']} steps")
    _announce("steps", f"each epoch stops after {STEPS_PER_EPOCH} step (the schedule is laid out for whole epochs)")
    kwargs.update(max_steps_per_epoch=STEPS_PER_EPOCH, max_val_images=IMAGES)
    return _ORIGINAL["fit"](*args, epochs=min(epochs, EPOCHS), **_as_on_cuda(kwargs))


def _evaluate(*args, **kwargs):
    _announce("images", f"evaluate stops after {IMAGES} images")
    return _ORIGINAL["evaluate"](*args, max_images=IMAGES, **_as_on_cuda(kwargs))


def _as_on_cuda(kwargs: dict) -> dict:
    """Autocast and channels-last where the chapter left them to the device's default (CUDA's lines)."""
    if kwargs.get("amp") is None:
        _announce("amp", "autocast in bfloat16 on the CPU, where CUDA would use float16")
        kwargs["amp"] = "bfloat16"
    if kwargs.get("channels_last") is None:
        kwargs["channels_last"] = True
    return kwargs


def _segmentation_loaders(train_set, val_set, batch_size: int, **kwargs):
    cap = int(os.environ["SEGBOOK_REHEARSAL_BATCH"])
    if batch_size > cap:
        _announce("batch", f"the training batch is cut from {batch_size} to {cap} (SEGBOOK_REHEARSAL_BATCH): "
                  "sizes and models as written, the batch not")
    return _ORIGINAL["segmentation_loaders"](train_set, val_set, min(batch_size, cap), **kwargs)


def skipped_check(source: str) -> None:
    """Called instead of raising when a chapter's ``assert`` fails."""
    print(SKIPPED_PREFIX + " ".join(source.split()))


class _AssertToCheck(ast.NodeTransformer):
    """``assert test, msg`` -> ``if not (test): skipped_check("assert test")``; the message is dropped."""

    text = ""  # the cell's source, kept by _remember

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        source = ast.get_source_segment(self.text, node) or ast.unparse(node)
        call = ast.parse(f"__rehearsal_skipped_check__({source!r})").body[0]
        new = ast.If(test=ast.UnaryOp(op=ast.Not(), operand=node.test), body=[call], orelse=[])
        return ast.copy_location(ast.fix_missing_locations(new), node)


def _remember(lines: list[str]) -> list[str]:
    _AssertToCheck.text = "".join(lines)
    return lines


def install(shell=None, setattr_=setattr) -> None:
    """Put the rehearsal's versions in place (``setattr_`` lets a test undo it), and relax ``shell``'s asserts."""
    def replace(name: str, new, modules) -> None:
        _ORIGINAL[name] = original = getattr(modules[0], name)
        for module in modules:
            if getattr(module, name, None) is original:  # the package and the module that defines it
                setattr_(module, name, functools.wraps(original)(new))

    replace("setup", _setup, [segbook, segbook.env])
    replace("fit", _fit, [segbook.train, segbook.train.loop])
    replace("evaluate", _evaluate, [segbook.train])
    if os.environ.get("SEGBOOK_REHEARSAL_BATCH"):
        replace("segmentation_loaders", _segmentation_loaders,
                [segbook.data] + [m for n, m in sys.modules.items() if n.startswith("segbook.data.")])
    if shell is not None:
        shell.user_ns["__rehearsal_skipped_check__"] = skipped_check
        shell.input_transformers_post.append(_remember)
        shell.ast_transformers.append(_AssertToCheck())
        _announce("asserts", "an assert that fails prints 'rehearsal: skipped check: ...' and the chapter goes on")


_ORIGINAL: dict = {}
if __name__ == "__main__":  # IPython runs a start-up file as __main__, in the user's namespace
    install(get_ipython())  # noqa: F821
