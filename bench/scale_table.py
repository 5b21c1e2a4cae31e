"""The scale benchmark's table: each workload on the small and the big database, from wrk's
outputs in two directories (bench/scale.sh: WORKLOAD.ROUND.txt), and the big data's p99 against
the small. Each figure is the median of the rounds; failures are summed.

Usage: python bench/scale_table.py SMALL_DIR BIG_DIR LONG_DIR

A second table compares a first page of 20 with short timelines (the small database) and with
long ones (LONG_DIR), each with its timelines and without (`include=`).
"""

from __future__ import annotations

import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from ratios import milliseconds

TARGET = 1.5  # issue 14: every workload's p99 on the big data within 1.5x of the small data
WORKLOADS = {
    "read_one": "GET one shipment (seller)",
    "track": "GET /track/{tn} (anonymous)",
    "first_page": "list, first page (seller)",
    "first_page_bare": "list, first page without timelines (`include=`)",
    "deep_page": "list, half-way down (seller; page 7,500 of the big)",
    "tag_absent": "list, `tag` absent for the seller",
    "tag_present": "list, `tag` on 1 in 23",
    "status_cancelled": "list, `status=cancelled` (2.9 %)",
    "partner_first_page": "list, first page (partner)",
    "partner_deep_page": "list, the seller's half-way cursor (partner)",
    "events_first": "GET /events (first page)",
    "events_after": "GET /events?after= (half-way)",
    "create": "POST /shipments",
    "update": "PATCH /shipments/{id} (partner scan)",
}


@dataclass(frozen=True)
class Run:
    rate: float
    p50_ms: float
    p99_ms: float
    failures: int  # non-2xx answers and socket errors
    kib_per_response: float  # headers included


def parse(path: Path) -> Run:
    output = path.read_text()
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])  # type: ignore[index]
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)[1]  # type: ignore[index]
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)[1]  # type: ignore[index]
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    failures = int(non_2xx[1]) if non_2xx else 0
    if socket_errors:
        failures += sum(int(count) for count in socket_errors.groups())
    requests, amount, unit = re.search(  # type: ignore[union-attr]
        r"(\d+) requests in \S+, ([\d.]+)([KMG]B) read", output
    ).groups()
    kib = float(amount) * {"KB": 1, "MB": 1024, "GB": 1024 * 1024}[unit] / int(requests)
    return Run(rate, milliseconds(p50), milliseconds(p99), failures, kib)


def median_of_rounds(directory: Path, workload: str) -> Run:
    runs = [parse(path) for path in sorted(directory.glob(f"{workload}.*.txt"))]
    return Run(
        statistics.median(run.rate for run in runs),
        statistics.median(run.p50_ms for run in runs),
        statistics.median(run.p99_ms for run in runs),
        sum(run.failures for run in runs),
        statistics.median(run.kib_per_response for run in runs),
    )


def main() -> None:
    small_dir, big_dir = Path(sys.argv[1]), Path(sys.argv[2])
    lines = [
        "| workload | small: req/s | small: p99 | big: req/s | big: p99 | p99 big / small "
        "| failures (small, big) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for workload, label in WORKLOADS.items():
        small, big = median_of_rounds(small_dir, workload), median_of_rounds(big_dir, workload)
        ratio = big.p99_ms / small.p99_ms
        mark = "" if ratio <= TARGET else " (over)"
        lines.append(
            f"| {label} | {small.rate:.0f} | {small.p99_ms:.1f} ms | {big.rate:.0f} "
            f"| {big.p99_ms:.1f} ms | **{ratio:.2f}x**{mark} | {small.failures}, {big.failures} |"
        )
    lines += ["", *long_timelines(small_dir, Path(sys.argv[3])), ""]
    for directory in sys.argv[1:4]:
        lines.append((Path(directory) / "build.txt").read_text().strip())
    sys.stdout.write("\n".join(lines) + "\n")


def long_timelines(small_dir: Path, long_dir: Path) -> list[str]:
    lines = [
        "| first page of 20 | req/s | p50 | p99 | KiB per response | failures |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    shapes = (("first_page", "with timelines"), ("first_page_bare", "`include=`"))
    for directory, events in ((small_dir, "5 events each"), (long_dir, "200 events each")):
        for workload, shape in shapes:
            run = median_of_rounds(directory, workload)
            lines.append(
                f"| {events}, {shape} | {run.rate:.0f} | {run.p50_ms:.1f} ms "
                f"| {run.p99_ms:.1f} ms | {run.kib_per_response:.1f} | {run.failures} |"
            )
    return lines


if __name__ == "__main__":
    main()
