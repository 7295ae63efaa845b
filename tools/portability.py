#!/usr/bin/env python3
"""Re-run chapters and stored-result checks under other CPU kernel choices, on one machine.

Why: a reader's CPU is not the one that stored the outputs. Another instruction
set (AVX-512, AVX2, SSE, NEON on a Mac) or another thread count adds floats in
another order, and a short training run turns that last-bit difference into
other trained numbers. A compared output that depends on it passes here and
fails there. PyTorch lets one machine imitate most of that variety:

* ``ATEN_CPU_CAPABILITY`` picks ATen's vectorised kernels: ``default`` (no
  SIMD), ``avx2``, ``avx512`` (never above what the CPU has);
* ``ONEDNN_MAX_CPU_ISA`` caps oneDNN's convolution kernels (``SSE41``,
  ``AVX2``, ``AVX512_CORE``, ...);
* ``OMP_NUM_THREADS`` changes how reductions are split between threads.

Each configuration runs ``pytest --nbval`` on the chosen paths in a fresh
process with those variables set, and the script prints one row per
configuration: passed or failed, the pytest summary and the wall time. It
exits non-zero if any configuration fails.

    .venv/bin/python tools/portability.py                          # every chapter and result check
    .venv/bin/python tools/portability.py --config generic-1t chapters/01_transposed_conv.ipynb
    .venv/bin/python tools/portability.py --list                   # the configurations

Standard library only; run it with the README's environment (``.venv``).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name: (variables, what it imitates). "default" is the machine as it is.
CONFIGS: dict[str, tuple[dict[str, str], str]] = {
    "default": ({}, "this machine's best kernels, its own thread count"),
    "generic-1t": ({"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"},
                   "no SIMD in ATen, one thread (an old or unusual CPU)"),
    "avx2-2t": ({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "2"},
                "an AVX2 laptop or cloud VM without AVX-512, two threads"),
    "sse41-4t": ({"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "OMP_NUM_THREADS": "4"},
                 "SSE4.1 convolutions, four threads on two cores"),
    "onednn-avx2-2t": ({"ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "2"},
                       "AVX2 convolutions beside this machine's ATen kernels, two threads"),
}

# The chapters and every test that re-runs a stored result.
DEFAULT_PATHS = ["chapters", "tests/test_compare_all_results.py", "tests/test_context_results.py",
                 "tests/test_pointrend_results.py", "tests/test_ccnet_results.py",
                 "tests/test_mask2former_results.py"]


def python() -> str:
    venv = ROOT / ".venv" / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    return str(venv) if venv.exists() else sys.executable


def summary_line(output: str) -> str:
    """pytest's closing line ("12 passed, 1 failed in 80.1s"), without its timing."""
    lines = [ln.strip("= ") for ln in output.splitlines() if re.search(r"\d+ (passed|failed|error)", ln)]
    return re.sub(r" in [\d.]+s.*", "", lines[-1]) if lines else "no summary"


def run(name: str, paths: list[str], extra: list[str]) -> tuple[bool, str, float, str]:
    variables, _ = CONFIGS[name]
    env = {**os.environ, **variables}
    command = [python(), "-m", "pytest", "--nbval", "-q", "-p", "no:randomly", *extra, *paths]
    began = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    output = done.stdout + done.stderr
    return done.returncode == 0, summary_line(output), seconds, output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", help=f"what pytest runs (default: {' '.join(DEFAULT_PATHS)})")
    parser.add_argument("--config", action="append", choices=sorted(CONFIGS),
                        help="a configuration to run (repeatable; default: every one but 'default')")
    parser.add_argument("--list", action="store_true", help="print the configurations and exit")
    parser.add_argument("--log-dir", type=Path, help="write each configuration's full pytest output here")
    args, extra = parser.parse_known_args()
    if args.list:
        settings = {name: " ".join(f"{k}={v}" for k, v in variables.items()) or "(nothing set)"
                    for name, (variables, _) in CONFIGS.items()}
        width = max(map(len, settings.values()))
        for name, (_, what) in CONFIGS.items():
            print(f"{name:15s} {settings[name]:{width}s}  {what}")
        return 0
    names = args.config or [n for n in CONFIGS if n != "default"]
    paths = args.paths or DEFAULT_PATHS
    print(f"{'configuration':15s} {'result':7s} {'seconds':>8s}  pytest", flush=True)
    failed = []
    for name in names:
        ok, line, seconds, output = run(name, paths, extra)
        print(f"{name:15s} {'passed' if ok else 'FAILED':7s} {seconds:8.0f}  {line}", flush=True)
        if args.log_dir:
            args.log_dir.mkdir(parents=True, exist_ok=True)
            (args.log_dir / f"{name}.log").write_text(output)
        if not ok:
            failed.append(name)
            tail = [ln for ln in output.splitlines() if ln.startswith(("FAILED", "ERROR"))]
            print("\n".join("    " + ln for ln in tail[:20]), flush=True)
    if failed:
        print(f"failed under: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
