#!/usr/bin/env python
"""Two runs' loss curves, step by step: how far the second strays from the first.

    python tools/compare_runs.py runs/bf16 runs/fp8 --after 50 --tolerance 0.01
    python tools/compare_runs.py a/metrics.jsonl b/metrics.jsonl --out compare.json

The question behind a precision change (FP8 against bf16), a resume (the resumed curve
against the uninterrupted one) or a new layout: on the same data in the same order, is the
loss the same? Each argument is a run folder (its metrics.jsonl, one line per optimizer
step) or the file itself. Steps both runs recorded, after `--after`, are compared as
|b - a| / |a|; the table shows every `--every`-th of them and the largest difference.
With `--tolerance`, the exit code says whether every compared step is within it (0) or not
(1); a missing or empty metrics file, or no step in common, is an error (2).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Dict, List, Optional


def metrics_path(run: str) -> str:
    """The metrics.jsonl of a run folder, or `run` itself when it names a file."""
    return os.path.join(run, "metrics.jsonl") if os.path.isdir(run) else run


def load_losses(run: str) -> Dict[int, float]:
    """step -> loss of every line of a run's metrics.jsonl (a later line for a step wins: a
    resumed run rewrites the steps after its checkpoint)."""
    path = metrics_path(run)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such metrics file (a run folder holds metrics.jsonl)")
    losses = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                losses[int(record["step"])] = float(record["loss"])
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}, line {number}: not a metrics record ({e})") from None
    if not losses:
        raise ValueError(f"{path}: no steps recorded")
    return losses


def relative_difference(a: float, b: float) -> float:
    """|b - a| / |a|; 0 for two equal values (zeros included), inf where a is 0 and b is not."""
    if a == b:
        return 0.0
    return abs(b - a) / abs(a) if a else math.inf


def compare(a: Dict[int, float], b: Dict[int, float], after: int = 0,
            tolerance: Optional[float] = None) -> Dict:
    """The step-by-step comparison of b against a over the steps both hold after `after`."""
    steps = sorted(s for s in set(a) & set(b) if s > after)
    if not steps:
        raise ValueError(f"the runs share no step after step {after} "
                         f"(first: steps {min(a)}..{max(a)}; second: {min(b)}..{max(b)})")
    diffs = {s: relative_difference(a[s], b[s]) for s in steps}
    worst = max(steps, key=lambda s: diffs[s])
    result = {"after": after, "steps": len(steps), "first_step": steps[0], "last_step": steps[-1],
              "max_rel_diff": diffs[worst], "max_rel_diff_step": worst,
              "mean_rel_diff": sum(diffs.values()) / len(steps),
              "identical_steps": sum(d == 0 for d in diffs.values()),
              "losses": [{"step": s, "a": a[s], "b": b[s], "rel_diff": diffs[s]} for s in steps]}
    if tolerance is not None:
        result["tolerance"] = tolerance
        result["within"] = diffs[worst] <= tolerance
        result["steps_over"] = [s for s in steps if diffs[s] > tolerance]
    return result


def table(result: Dict, every: int, names: List[str]) -> str:
    """Every `every`-th compared step, the last one and the worst one, then the summary."""
    rows = result["losses"]
    shown = {r["step"] for i, r in enumerate(rows) if i % every == 0}
    shown |= {result["last_step"], result["max_rel_diff_step"]}
    lines = [f"| step | {names[0]} | {names[1]} | difference |", "|---:|---:|---:|---:|"]
    for r in rows:
        if r["step"] in shown:
            mark = " (largest)" if r["step"] == result["max_rel_diff_step"] else ""
            lines.append(f"| {r['step']} | {r['a']:.4f} | {r['b']:.4f} | {100 * r['rel_diff']:.3f}%{mark} |")
    lines.append(f"steps compared: {result['steps']} ({result['first_step']}..{result['last_step']}), "
                 f"largest difference {100 * result['max_rel_diff']:.3f}% at step {result['max_rel_diff_step']}, "
                 f"mean {100 * result['mean_rel_diff']:.3f}%, identical steps {result['identical_steps']}")
    if "tolerance" in result:
        verdict = "within" if result["within"] else f"NOT within ({len(result['steps_over'])} steps over)"
        lines.append(f"tolerance {100 * result['tolerance']:.2f}%: {verdict}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("first", help="the reference run: a run folder or its metrics.jsonl")
    p.add_argument("second", help="the run compared against it")
    p.add_argument("--after", type=int, default=0, help="compare the steps after this one (default 0: all)")
    p.add_argument("--tolerance", type=float, help="largest relative difference allowed (0.01 = 1%%): exit 1 past it")
    p.add_argument("--every", type=int, default=50, help="show every N-th compared step in the table (default 50)")
    p.add_argument("--names", nargs=2, default=["first", "second"], metavar=("A", "B"), help="column names")
    p.add_argument("--out", help="write the comparison (every step's losses included) as JSON here")
    args = p.parse_args(argv)
    if args.every < 1:
        p.error("--every must be at least 1")
    if args.tolerance is not None and args.tolerance < 0:
        p.error("--tolerance must be at least 0")
    try:
        result = compare(load_losses(args.first), load_losses(args.second), args.after, args.tolerance)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result.update(first=args.first, second=args.second, names=args.names)
    print(table(result, args.every, args.names))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0 if result.get("within", True) else 1


if __name__ == "__main__":
    sys.exit(main())
