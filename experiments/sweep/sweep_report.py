"""results.md, results.json and results.png from the runs' rows (records.py) and verdicts (verdicts.py)."""
from __future__ import annotations

import json
import math
import os
from typing import Dict, List

from . import plots, verdicts

require_matplotlib = plots.require_matplotlib


def _fmt(value, spec: str, missing: str = "–") -> str:
    return missing if value is None else format(value, spec)


def _count(value) -> str:
    """12,582,912 -> 12.58M; 6,144 -> 6.1k."""
    if value is None:
        return "–"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.{2 if unit != 'k' else 1}f}{unit}"
    return f"{value:.0f}"


def _percent(value) -> str:
    return "–" if value is None else f"{value:.0f}%"


def setting_rows(runs: List[Dict]) -> List[Dict]:
    """One row per (budget, setting): the mean over seeds of the finished runs, and the spread."""
    found = verdicts.groups(runs)
    assumed = verdicts.assumed_spread(found)
    out = []
    ordered = sorted(found.items(), key=lambda kv: (kv[0][1] != "x1", kv[0][1], _order(runs, kv[0][0])))
    for (setting, budget), g in ordered:
        first = next(r for r in runs if r.get("setting", r["name"]) == setting and f"x{r.get('scale', 1)}" == budget
                     and r.get("status") == "ok")
        out.append({"setting": setting, "budget": budget, "seeds": g.seeds, "losses": g.losses, "mean": g.mean,
                     "spread": g.spread, "assumed_spread": assumed if g.spread is None else None,
                     **{k: first.get(k) for k in ("ffn", "guided", "params", "ffn_params", "ffn_percent",
                                                  "structured_percent", "tokens", "train_flops")}})
    return out


def _order(runs: List[Dict], setting: str) -> int:
    names = [r.get("setting", r["name"]) for r in runs]
    return names.index(setting) if setting in names else len(names)


def _setting_table(rows: List[Dict]) -> List[str]:
    lines = ["| budget | setting | FFN | params | FFN % of dense | structured % | tokens | training FLOPs | seeds | "
             "val loss (mean) | spread | val PPL (mean) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        spread = _fmt(r["spread"], ".3f") if r["spread"] is not None else \
            (f"({r['assumed_spread']:.3f} assumed)" if r["assumed_spread"] is not None else "–")
        lines.append(
            f"| {r['budget']} | {r['setting']} | {r.get('ffn', '')}{' + self-guided' if r.get('guided') else ''} | "
            f"{_count(r.get('params'))} | {_percent(r.get('ffn_percent'))} | {_percent(r.get('structured_percent'))} | "
            f"{_count(r.get('tokens'))} | {_fmt(r.get('train_flops'), '.3e')} | {len(r['seeds'])} | "
            f"{r['mean']:.4f} | {spread} | {math.exp(r['mean']):.2f} |")
    return lines


def _spread_section(rows: List[Dict]) -> List[str]:
    seeded = [r for r in rows if r["spread"] is not None]
    lines = ["## Seed spread", "",
             "A setting's **spread** is max - min of its seeds' final validation losses (three seeds: about 1.7 "
             "standard deviations of one run's loss). The seed (`training.seed`) changes the initial weights, "
             "the order of the training data and the guide's reduce_flop draws, and also which held-out sequences "
             "are evaluated; the evaluations cover nearly all of the held-out split (Setup), so seeds are "
             "measured on nearly the same text. Settings run "
             "with one seed are given the **assumed spread**, the largest spread measured below. A comparison "
             "uses the larger spread of the settings it compares and is **held** only where the difference "
             "exceeds it.", ""]
    if not seeded:
        return lines + ["No setting has two finished seeds yet: every comparison is within the seed spread.", ""]
    lines += ["| budget | setting | seeds | final val loss per seed | mean | spread (loss) | spread (PPL) |",
              "|---|---|---|---|---:|---:|---:|"]
    for r in seeded:
        ppl = math.exp(max(r["losses"])) - math.exp(min(r["losses"]))
        lines.append(f"| {r['budget']} | {r['setting']} | {', '.join(str(s) for s in r['seeds'])} | "
                     f"{', '.join(f'{v:.4f}' for v in r['losses'])} | {r['mean']:.4f} | {r['spread']:.4f} | "
                     f"{ppl:.2f} |")
    return lines + [""]


def _run_table(runs: List[Dict]) -> List[str]:
    lines = ["| run | seed | tokens | training FLOPs | val loss | val PPL | tokens/s | wall s | status |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in runs:
        status = r.get("status", "?") + (f": {r['reason']}" if r.get("reason") and r.get("status") != "ok" else "")
        lines.append(f"| {r['name']} | {r.get('seed') or '–'} | {_count(r.get('tokens'))} | "
                     f"{_fmt(r.get('train_flops'), '.3e')} | {_fmt(r.get('val_loss'), '.4f')} | "
                     f"{_fmt(r.get('val_ppl'), '.2f')} | {_fmt(r.get('tokens_per_s'), ',.0f')} | "
                     f"{_fmt(r.get('wall_s'), '.0f')} | {status} |")
    return lines


def markdown(report: Dict) -> str:
    env, s = report["environment"], report["settings"]
    rows = setting_rows(report["runs"])
    lines = [f"# Results: dense vs structured FFNs vs self-guided training ({s['family_name']})", "",
             f"Generated by `{s['command']}` on {env.get('date', '?')}, from the runs' own logs.", "",
             f"**Device** {env.get('device', '?')} | torch {env.get('torch', '?')} (CUDA {env.get('cuda', '-')}) | "
             f"deepspeed {env.get('deepspeed', '?')} | Python {env.get('python', '?')}"
             + (f" | commit {env['commit']}" if env.get("commit") else ""), "",
             "## Setup", "", s["setup"], "",
             "## Does it learn like the paper?", ""]
    for e in report["expectations"]:
        lines.append(f"- {e['claim']}: **{e['verdict']}**." + (f" {e['note']}." if e.get("note") else ""))
        lines += [f"  - {c['text']}" for c in e["comparisons"]]
    lines += ["", *_spread_section(rows), "## Settings", "", *_setting_table(rows), "",
              "Budget x1: the dense run's tokens (the self-guided and `_flops` runs: its FLOPs); x4: four times "
              "that. FFN % of dense: all FFN weights and biases (the first layer's dense FFN included) against "
              "the dense model's; structured %: one structured layer's matrices against a dense layer's (the "
              "paper's 32% / 63%). Tokens and FLOPs are those trained (a self-guided run's repeat phase "
              "included); FLOPs follow model/accounting.py (6 x matmul params + attention scores per token, "
              "plus the guide's expected share). Val loss: the last evaluation, on the held-out split, mean "
              "over the setting's finished seeds.", "",
              f"![validation loss against tokens and FLOPs]({os.path.basename(report['plot'])})", "",
              "Validation loss against tokens trained (left) and training FLOPs (right), one row per budget; "
              "lines: mean over seeds, bands: best to worst seed.", "",
              "## Runs", "", *_run_table(report["runs"]), "",
              "tokens/s: median over log windows after the first (self-guided: guided and plain steps mixed); "
              "wall s: the whole process, start-up included, with up to four runs side by side on one host.",
              "", "## Reproduce", "", "```bash", *s["reproduce"], "```", ""]
    return "\n".join(lines)


def write_report(runs: List[Dict], environment: Dict, settings: Dict, out_dir: str) -> Dict:
    os.makedirs(out_dir, exist_ok=True)
    report = {"environment": environment, "settings": settings, "runs": runs,
              "expectations": verdicts.expectations(runs), "plot": os.path.join(out_dir, "results.png")}
    plots.plot(report, report["plot"])
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown(report))
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({**report, "settings_table": setting_rows(runs), "plot": os.path.basename(report["plot"])}, f,
                  indent=1)
        f.write("\n")
    return report
