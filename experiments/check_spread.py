"""Re-run each stored result's check configuration on other CPU kernels and seeds; store the spread.

Every file in ``segbook/results/`` that a test re-runs holds a ``check`` row:
one cheap configuration (one epoch of one model, seed 0) that the test trains
again and compares. What may the comparison demand? Two numbers decide it:

* the **configuration spread**: the same run under the kernel choices of
  ``tools/portability.py`` (another instruction set, another thread count).
  Floating-point sums then add up in another order; that is the difference a
  reader's machine is entitled to;
* the **seed spread**: the same configuration with seeds 1 and 2, the smallest
  real change to the run. A check that cannot tell seed 0 from seed 1 tells
  nothing.

After one epoch the validation scores are already chaotic (one epoch of SGD
turns a last-bit difference into another model: on this machine FCN-32s's
pixel accuracy moved from 0.68 to 0.61 between kernel choices), while the mean
training loss of that epoch, dominated by its first steps, moves in the fourth
digit. This script measures both spreads for every recorded quantity and
writes them beside the ``check`` row as ``check_spread``; the tests compare the
quantities whose configuration spread is far below their seed spread, with a
tolerance derived from the measurement (and say so).

    python -m experiments.check_spread [compare_all ccnet_compare context_compare pointrend_compare
                                        mask2former_compare]

Each run is a fresh process with the configuration's variables set; about
four minutes for all four on two cores.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from tools.portability import CONFIGS  # the kernel choices a reader's machine may make

ROOT = Path(__file__).resolve().parent.parent

NAMES = ("compare_all", "ccnet_compare", "context_compare", "pointrend_compare", "mask2former_compare")
OTHER_SEEDS = (1, 2)
SKIP = {"model", "name", "seed", "epochs", "counts", "seconds", "train_seconds"}


def run_one(name: str, seed: int, variables: dict[str, str]) -> dict:
    """``experiments/<name>.py``'s ``run_check(seed)`` in a fresh process with ``variables`` set."""
    code = f"import json; import experiments.{name} as e; print('ROW', json.dumps(e.run_check({seed})))"
    env = {**os.environ, **variables, "TQDM_DISABLE": "1", "PYTHONHASHSEED": "0"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{name} (seed {seed}, {variables}) failed:\n{done.stderr[-3000:]}")
    return json.loads(next(ln for ln in done.stdout.splitlines() if ln.startswith("ROW "))[4:])


def numbers(row: dict) -> dict[str, float]:
    return {k: v for k, v in row.items() if k not in SKIP and isinstance(v, (int, float))}


def spread(name: str) -> dict:
    by_config = {config: run_one(name, 0, variables) for config, (variables, _) in CONFIGS.items()}
    by_seed = {seed: run_one(name, seed, {}) for seed in OTHER_SEEDS}
    for config, row in by_config.items():
        print(f"{name:18s} {config:11s} seed 0 {json.dumps(numbers(row))}", flush=True)
    for seed, row in by_seed.items():
        print(f"{name:18s} {'default':11s} seed {seed} {json.dumps(numbers(row))}", flush=True)
    keys = numbers(by_config["default"])
    config_range = {k: round(max(r[k] for r in by_config.values()) - min(r[k] for r in by_config.values()), 4)
                    for k in keys}
    seed_gap = {k: round(min(abs(r[k] - by_config["default"][k]) for r in by_seed.values()), 4) for k in keys}
    return {"check": by_config["default"],
            "check_spread": {
                "what": "the check run under every configuration of tools/portability.py (seed 0) and with "
                        f"seeds {list(OTHER_SEEDS)} (default configuration): written by experiments/check_spread.py",
                "configs": {c: numbers(r) for c, r in by_config.items()},
                "seeds": {str(s): numbers(r) for s, r in by_seed.items()},
                "config_range": config_range,    # max - min over the configurations, seed 0
                "seed_gap": seed_gap}}            # the smallest |seed s - seed 0| in the default configuration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", choices=[*NAMES, []], help=f"default: {' '.join(NAMES)}")
    args = parser.parse_args()
    for name in args.names or NAMES:
        path = ROOT / "segbook" / "results" / f"{name}.json"
        stored = json.loads(path.read_text())
        stored.update(spread(name))
        path.write_text(json.dumps(stored, indent=1) + "\n")
        print(f"wrote the check row and its spread into {path.relative_to(ROOT)}", flush=True)


if __name__ == "__main__":
    main()
