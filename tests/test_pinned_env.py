"""The root conftest pins the stored outputs' environment, whatever the reader's shell exports."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_conftest_overrides_an_exported_full_profile():
    shell = {**os.environ, "SEGBOOK_PROFILE": "full", "SEGBOOK_DEVICE": "cuda", "TQDM_DISABLE": "0"}
    code = ("import os, runpy; runpy.run_path('conftest.py'); "
            "print(os.environ['SEGBOOK_PROFILE'], os.environ['SEGBOOK_DEVICE'], os.environ['TQDM_DISABLE'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=shell, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["quick", "cpu", "1"]


def test_this_session_runs_pinned():
    assert (os.environ["SEGBOOK_PROFILE"], os.environ["SEGBOOK_DEVICE"]) == ("quick", "cpu")
