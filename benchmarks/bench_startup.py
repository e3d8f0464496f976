"""Cold start of each command: wall time of `python X.py --help` and of `python -c "import predict"`, and which
heavy libraries each one loads before it does anything.

Each command runs in a fresh interpreter `--repeats` times (the fastest is kept: the first run also warms the page
cache); the heavy-library column comes from a separate run that imports the module and lists what sys.modules then
holds. Prints a table and, with --report, appends it to BENCHMARKS.md.

    python benchmarks/bench_startup.py --repeats 5 --report BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["predict.py", "prepare_data.py", "main.py", "prepare_ucf101.py", "compare_runs.py"]
HEAVY = ["torch", "torchvision", "transformers", "timm", "matplotlib", "scipy", "mlflow", "wandb", "av", "cv2"]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="runs per command; the fastest is reported")
    p.add_argument("--report", default=None, help="markdown file the table is appended to (e.g. BENCHMARKS.md)")
    return p


def wall(argv: list[str], repeats: int) -> float:
    """Fastest wall time of `argv` over `repeats` runs, in a fresh interpreter each, output discarded."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        best = min(best, time.perf_counter() - start)
    return best


def heavy_loaded(module: str) -> list[str]:
    """The heavy libraries that importing `module` loads."""
    code = f"import sys, {module}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.split()


def main(args: argparse.Namespace) -> None:
    rows = [f"| command | wall s (fastest of {args.repeats}) | heavy libraries loaded at import |", "|---|---|---|"]
    bare = wall([sys.executable, "-c", "pass"], args.repeats)
    rows.append(f"| `python -c pass` (the interpreter alone) | {bare:.2f} | - |")
    for script in COMMANDS:
        t = wall([sys.executable, script, "--help"], args.repeats)
        rows.append(f"| `python {script} --help` | {t:.2f} | {', '.join(heavy_loaded(script[:-3])) or 'none'} |")
    t = wall([sys.executable, "-c", "import predict"], args.repeats)
    rows.append(f"| `python -c \"import predict\"` | {t:.2f} | {', '.join(heavy_loaded('predict')) or 'none'} |")
    print("\n".join(rows))
    if args.report:
        command = "python benchmarks/bench_startup.py " + shlex.join(sys.argv[1:])
        load = os.getloadavg()[0]
        lines = ["", f"## Cold start of each command ({datetime.date.today().isoformat()})", "",
                 f"Python {platform.python_version()}, {os.cpu_count()} cores, load average {load:.1f} at the end "
                 f"(a machine shared with other jobs: indicative). Command: `{command}`", "", *rows, ""]
        with open(args.report, "a", encoding="utf-8") as fh:
            fh.write("\n".join(lines))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
