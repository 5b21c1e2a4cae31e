"""The API against the floor, from run.sh's results table: req/s and latency ratios per workload.

Usage: python bench/ratios.py results.md
"""

from __future__ import annotations

import sys
from pathlib import Path

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def milliseconds(latency: str) -> float:
    """wrk's `24.98ms`, `879.35us`, `1.72s` or `1.05m`, in milliseconds."""
    for unit in ("us", "ms", "s", "m"):
        if latency.endswith(unit):
            return float(latency[: -len(unit)]) * UNITS[unit]
    raise ValueError(latency)


def _ratio(api: float, floor: float) -> str:
    return f"{api / floor:.2f}x" if floor else "n/a"


def main() -> None:
    rows: dict[tuple[str, str], list[str]] = {}
    for line in Path(sys.argv[1]).read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 6 or cells[0] in ("workload", "") or cells[0].startswith("---"):
            continue
        rows[(cells[0], cells[1])] = cells
    out = [
        "| workload | req/s api / floor | p50 api / floor | p99 api / floor | non-2xx api, floor |",
        "|---|---:|---:|---:|---:|",
    ]
    for (workload, app), api in rows.items():
        floor = rows.get((workload, "floor"))
        if app != "api" or floor is None:
            continue
        rate = _ratio(float(api[2]), float(floor[2]))
        p50 = _ratio(milliseconds(api[3]), milliseconds(floor[3]))
        p99 = _ratio(milliseconds(api[4]), milliseconds(floor[4]))
        out.append(f"| {workload} | **{rate}** | {p50} | {p99} | {api[5]}, {floor[5]} |")
    alone = rows.get(("read one (10 events)", "api"))
    keyed = rows.get(("read one with an API key", "api"))
    if alone and keyed:
        rate = _ratio(float(keyed[2]), float(alone[2]))
        p99 = _ratio(milliseconds(keyed[4]), milliseconds(alone[4]))
        out.append("")
        out.append(f"API read one with a key / with a token: req/s **{rate}**, p99 {p99}")
    loaded = rows.get(("read one under logins", "api"))
    if alone and loaded:
        ratio = _ratio(milliseconds(loaded[4]), milliseconds(alone[4]))
        out.append("")
        out.append(f"API read one p99 under logins / alone: **{ratio}**")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
