"""Time and memory of synthetic generation and ingestion at scale.

For each size it runs, as separate processes so that peak memory is each
step's own:

1. ``moviesforyou synth`` (CSV layout, the layout of ml-25m);
2. ``moviesforyou ingest`` of that folder into a fresh embedded warehouse;
3. the same ingest again, which finds the files unchanged and loads nothing.

Usage::

    uv run python benchmarks/ingest_scale.py --ratings 1000000 25000000

It prints one table row per size; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# A fresh wrapper process per step: its RUSAGE_CHILDREN peak is that step's alone.
_WRAP = (
    "import resource, subprocess, sys; "
    "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, "
    "stderr=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def run(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run a command; return (seconds, its peak RSS in MiB)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _WRAP, *args], env=env, check=True,
                          capture_output=True, text=True)
    return time.perf_counter() - start, int(done.stdout.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratings", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    options = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mfy-bench-"))
    work.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MFY_")}
    env["MFY_HOME"] = str(work / "home")
    cli = [sys.executable, "-m", "moviesforyou"]
    print(f"{'ratings':>12} {'synth s':>8} {'synth MiB':>9} {'ingest s':>9} {'rows/s':>10} "
          f"{'ingest MiB':>10} {'rerun s':>8} {'files MiB':>9}", flush=True)
    try:
        for n in sorted(options.ratings):
            out = work / f"synth-{n}"
            synth_s, synth_mib = run([*cli, "synth", str(out), "-n", str(n), "--layout", "csv"],
                                     env)
            size = sum(p.stat().st_size for p in out.iterdir()) / 2**20
            dataset = f"synth-{n}"
            ingest_s, ingest_mib = run([*cli, "ingest", "-d", dataset, "-s", str(out)], env)
            rerun_s, _ = run([*cli, "ingest", "-d", dataset, "-s", str(out)], env)
            print(f"{n:>12,} {synth_s:>8.1f} {synth_mib:>9.0f} {ingest_s:>9.1f} "
                  f"{n / ingest_s:>10,.0f} {ingest_mib:>10.0f} {rerun_s:>8.1f} {size:>9.0f}",
                  flush=True)
            shutil.rmtree(out)
    finally:
        subprocess.run([*cli, "warehouse", "stop"], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        if not options.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
