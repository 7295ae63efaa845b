"""Rehearse the full profile of every chapter on the CPU, and report what it took.

    python tools/rehearse.py                      # every chapter
    python tools/rehearse.py chapters/03_fcn.ipynb chapters/05_ccnet.ipynb
    python tools/rehearse.py --record             # add this run's skipped checks to the expected ones
    python tools/rehearse.py --batch 2 chapters/04_pspnet.ipynb   # CI: training batches cut to 2

Each chapter is executed from its stored file into a copy (the stored quick
outputs are never touched) with ``SEGBOOK_PROFILE=full`` and a kernel that
runs ``tools/rehearsal_kernel.py`` first (the full profile on the CPU, every
loop cut short, failing asserts printed; see that file), on the VOC-shaped data
and stand-in ImageNet weights of ``tools/make_rehearsal_data.py`` (made first
when missing), with checkpoints in a fresh temporary data folder. So every
``pick(full=...)`` value runs as written: the sizes, crops, backbones and batch
sizes, the weight loading, the checkpoints, autocast and channels-last; the
loops stop after a few steps.

A chapter passes when every cell runs and every check it skipped (an ``assert``
that failed; a rehearsal trains two steps, so a bar written for a trained model
cannot hold) is listed for it in ``tools/rehearsal_checks.json``. A skipped check
that is not listed fails the chapter: it may be a bug of the full branch. So
does a fallback line (ImageNet weights "unavailable", "full profile
unavailable"): a rehearsal that started from random weights, or fell back to
the quick profile, did not run the reader's full branch.

The table gives each chapter's wall time and its kernel's peak resident memory
(``getrusage`` of the process that ran it: the largest of its children).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

KERNEL_STARTUP = ROOT / "tools" / "rehearsal_kernel.py"
SKIPPED_PREFIX = "rehearsal: skipped check: "  # what rehearsal_kernel.py prints for a failed assert
CHECKS = ROOT / "tools" / "rehearsal_checks.json"
CELL_TIMEOUT = 3600  # seconds; full-size steps on two cores are slow, but they end
# What segbook prints where a reader's full run would have what the rehearsal lacks (models/weights.py,
# env.py): each means a part of the full branch did not run.
FALLBACKS = ("are unavailable (", "full profile unavailable:")


def _run_one(notebook: Path, out: Path) -> int:
    """In a child process: execute ``notebook`` into ``out``; print one JSON line with the kernel's peak RSS."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(notebook.parent)}})
    error = None
    try:
        client.execute()
    except CellExecutionError as err:
        plain = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # the traceback's colours
        lines = [line for line in plain.splitlines() if line.strip()]
        error = lines[-1] if lines else type(err).__name__
    nbformat.write(nb, out)
    skipped, fallbacks = [], []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            text = output.get("text", "") if output.get("output_type") == "stream" else ""
            skipped += [line[len(SKIPPED_PREFIX):] for line in text.splitlines() if line.startswith(SKIPPED_PREFIX)]
            fallbacks += [line for line in text.splitlines() if any(f in line for f in FALLBACKS)]
    if error is None and fallbacks:
        error = f"fell back where a full run would not: {fallbacks[0]}"
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB
    print(json.dumps({"error": error, "skipped": skipped, "peak_mib": peak_kib / 1024}))
    return 0


def rehearse(notebook: Path, env: dict, out_dir: Path) -> dict:
    began = time.perf_counter()
    out = out_dir / notebook.name
    proc = subprocess.run([sys.executable, __file__, "--one", str(notebook), "--into", str(out)], env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - began
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"the runner failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}",
                "skipped": [], "peak_mib": float("nan"), "seconds": seconds, "executed": str(out)}
    return {**json.loads(lines[-1]), "seconds": seconds, "executed": str(out)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="chapters to rehearse (default: all)")
    parser.add_argument("--data", type=Path, default=None,
                        help="the rehearsal data folder (default: tools/make_rehearsal_data.py's)")
    parser.add_argument("--keep", type=Path, default=None, help="write the executed copies here")
    parser.add_argument("--record", action="store_true",
                        help="write this run's skipped checks to tools/rehearsal_checks.json")
    parser.add_argument("--batch", type=int, default=None,
                        help="cut every training batch to this size (SEGBOOK_REHEARSAL_BATCH; CI's time budget)")
    parser.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--into", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        return _run_one(args.one, args.into)

    from make_rehearsal_data import make_rehearsal_data  # tools/, the script's own folder
    from segbook.settings import data_home

    voc_root, torch_home = make_rehearsal_data((args.data or data_home() / "rehearsal").expanduser())
    notebooks = args.notebooks or sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))
    expected = json.loads(CHECKS.read_text()) if CHECKS.is_file() else {}
    results, failed = {}, False
    with tempfile.TemporaryDirectory(prefix="segbook-rehearsal-") as tmp:
        out_dir = args.keep or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        startup = Path(tmp) / "ipython" / "profile_default" / "startup"
        startup.mkdir(parents=True)
        shutil.copy(KERNEL_STARTUP, startup / "00-rehearsal.py")  # the kernel runs it before the first cell
        for notebook in notebooks:
            notebook = notebook.resolve()
            env = {**os.environ, "SEGBOOK_PROFILE": "full", "SEGBOOK_DEVICE": "cpu", "IPYTHONDIR": str(startup.parents[1]),
                   "SEGBOOK_VOC_ROOT": str(voc_root), "TORCH_HOME": str(torch_home), "TQDM_DISABLE": "1",
                   "SEGBOOK_DATA": str(Path(tmp) / "data" / notebook.stem),  # checkpoints start afresh
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
            if args.batch:
                env["SEGBOOK_REHEARSAL_BATCH"] = str(args.batch)
            result = rehearse(notebook, env, out_dir)
            allowed = set(expected.get(notebook.stem, []))
            result["unexpected"] = [s for s in result["skipped"] if s not in allowed]
            result["ok"] = result["error"] is None and (args.record or not result["unexpected"])
            failed |= not result["ok"]
            results[notebook.stem] = result
            print(f"{notebook.stem:<22} {'pass' if result['ok'] else 'FAIL':<5} {result['seconds']:7.0f} s "
                  f"{result['peak_mib'] / 1024:6.1f} GiB peak RSS  {len(result['skipped'])} checks skipped",
                  flush=True)
            if result["error"]:
                print(f"    error: {result['error']}")
            for check in result["unexpected"] if not args.record else []:
                print(f"    skipped, and not expected (tools/rehearsal_checks.json): {check}")
    if args.record:
        for stem, r in results.items():  # a union: a check that may be skipped once stays allowed
            if r["error"] is None:
                expected[stem] = sorted(set(expected.get(stem, [])) | set(r["skipped"]))
        CHECKS.write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
        print(f"recorded the skipped checks in {CHECKS.relative_to(ROOT)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    print("rehearsal " + ("FAILED" if failed else "passed") + ": a rehearsal proves the full branch runs, "
          "its numbers are not results")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
