"""Every benchmark, one after the other: `python bench/run_all.py` (about 15 minutes on 2 cores).

Each script prints its own figures and ratios, measured side by side in one run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SCRIPTS = ["progress_latency.py", "poll_throughput.py", "render_overhead.py", "memory.py", "farm_scaling.py"]


def main() -> int:
    failed = []
    for script in SCRIPTS:
        print(f"\n=== {script} ===", flush=True)
        started = time.monotonic()
        result = subprocess.run([sys.executable, str(BENCH / script)], cwd=BENCH)
        print(f"({time.monotonic() - started:.0f} s)", flush=True)
        if result.returncode:
            failed.append(script)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
