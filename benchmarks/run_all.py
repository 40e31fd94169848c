"""`make bench`: run every benchmark in turn; each prints its table and writes benchmarks/results/.

    python benchmarks/run_all.py [--quick]

Benchmarks are not tests: they measure, print ratios measured in one run, and never fail on a
target (the figures are reported, met or missed).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["render_throughput.py", "campaign_throughput.py", "campaign_memory.py", "ingest_throughput.py",
              "orchestration_overhead.py"]

if __name__ == "__main__":
    extra = sys.argv[1:]
    for name in BENCHMARKS:
        print(f"=== {name}", flush=True)
        subprocess.run([sys.executable, str(HERE / name), *extra], check=True)
