#!/usr/bin/env python
"""Print parameters and training FLOPs per token for a config, or the paper-size table.

    python tools/model_stats.py                          # paper's 4 sizes x 4 FFN kinds
    python tools/model_stats.py --config configs/1p3b_lowrank.json [--override k=v] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_sffn.config import ConfigError, load_config  # noqa: E402
from megatron_sffn.model.paper import paper_table  # noqa: E402
from megatron_sffn.model.accounting import model_stats  # noqa: E402


def _m(x: float) -> str:
    return f"{x / 1e6:,.1f}M"


def format_rows(rows) -> str:
    head = f"{'model':<8} {'ffn':<22} {'total':>10} {'non-emb':>10} {'ffn':>9} {'ffn %':>6} {'GFLOP/tok':>10} {'paper':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        paper = f"{r['paper_params_m']}M" if r.get("paper_params_m") else ""
        lines.append(f"{r['size']:<8} {r['ffn']:<22} {_m(r['total_params']):>10} {_m(r['non_embedding_params']):>10} "
                     f"{_m(r['ffn_params']):>9} {r['ffn_percent']:>5.0f}% {r['train_flops_per_token'] / 1e9:>10.2f} {paper:>7}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="run config JSON; omit for the paper-size table")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.config is None:
        rows = paper_table()
        print(json.dumps(rows, indent=2) if args.json else format_rows(rows))
        return 0
    try:
        cfg = load_config(args.config, args.override)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stats = model_stats(cfg.model).as_dict()
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        for key, value in stats.items():
            print(f"{key:<30} {value:,.0f}" if isinstance(value, (int, float)) else f"{key:<30} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
