"""Pin what the stored chapter outputs were made with: quick profile, CPU, no progress bars.

The notebook kernels that nbval starts inherit this process's environment, so
setting it here covers both the unit tests and the chapters. The values are
forced, not defaulted: a reader who exported ``SEGBOOK_PROFILE=full`` for their
own GPU runs (as the README suggests) must still get the stored outputs back.
"""
import os

PINNED = {
    "SEGBOOK_PROFILE": "quick",
    "SEGBOOK_DEVICE": "cpu",
    "TQDM_DISABLE": "1",
    "PYTHONHASHSEED": "0",
}
os.environ.update(PINNED)
