"""Pin what the stored chapter outputs were made with: quick profile, CPU, no progress bars.

The notebook kernels that nbval starts inherit this process's environment, so
setting it here covers both the unit tests and the chapters.
"""
import os

os.environ.setdefault("SEGBOOK_PROFILE", "quick")
os.environ.setdefault("SEGBOOK_DEVICE", "cpu")
os.environ.setdefault("TQDM_DISABLE", "1")
