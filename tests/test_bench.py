"""A smoke test of `make bench`'s harness: it starts real servers, loads them, prints a table.

The figures themselves are never asserted: these machines are shared and noisy.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_harness_measures_each_variant_against_the_baseline(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable, str(REPO / "bench" / "run.py"),
            "--rounds", "1", "--duration", "0.5", "--warmup", "0.2", "--connections", "4",
            "--variants", "baseline; static endpoint; hello (C), thread pool",
            "--load", "python", "--no-save", "--skip-dispatch",
        ],
        capture_output=True, text=True, timeout=240, check=False,
        env={**os.environ, "BACKWORKS_CACHE_DIR": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(r"^\| (.+?) \| ([\d,]+) \| 1 \| ([\d.]+)x \|$", result.stdout, re.M)
    assert [name for name, _, _ in rows] == [
        "baseline: aiohttp + Python handler",
        "static endpoint",
        "hello (C), thread pool",
    ]
    assert rows[0][2] == "1.00", "ratios are against the baseline of the same run"
    assert all(int(rate.replace(",", "")) > 0 for _, rate, _ in rows)
