"""Read the sweep's runs back and write results.md, results.json and results.png.

Everything comes from the run folders: `sweep_record.json` (what experiments/sweep/run_sweep.py
launched, how it ended) and the TensorBoard events the training loop wrote
(`val/loss`, `train/loss`, `perf/tokens_per_s`, all against the optimizer step). Tokens
and training FLOPs at each step are recomputed from the run's config with the project's
accounting (model/accounting.py), including the guide's share during self-guided steps
(its expected cost a per step with reduce_flop, as the training loop counts it), so the
FLOPs axis is exact for every run without trusting logged floats.
"""
from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional, Tuple

from megatron_sffn.config import Config, load_config
from megatron_sffn.model.accounting import dense_equivalent, model_stats, structured_params
from megatron_sffn.model.paper import describe_ffn

RECORD_FILE = "sweep_record.json"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------------------------------
# Reading one run
# ---------------------------------------------------------------------------------------
def read_scalars(run_dir: str, tags) -> Dict[str, List[Tuple[int, float]]]:
    """tag -> [(step, value)] from run_dir/tensorboard (missing tags -> [])."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tb = os.path.join(run_dir, "tensorboard")
    out = {tag: [] for tag in tags}
    if not os.path.isdir(tb):
        return out
    acc = EventAccumulator(tb, size_guidance={"scalars": 0})
    acc.Reload()
    available = set(acc.Tags().get("scalars", []))
    for tag in tags:
        if tag in available:
            points = {e.step: e.value for e in acc.Scalars(tag)}   # a repeated step keeps its last value
            out[tag] = sorted(points.items())
    return out


def cumulative_flops(cfg: Config, steps: int) -> List[float]:
    """Training FLOPs after 0, 1, ..., `steps` optimizer steps, guides included."""
    from megatron_sffn.training.phases import RunPhases
    stats = model_stats(cfg.model)
    phases = RunPhases.from_config(cfg)
    tokens_per_step = cfg.training.global_batch_size * cfg.model.seq_length
    sg = cfg.self_guided
    total, out = 0.0, [0.0]
    for step in range(steps):
        alpha = phases.alpha(step) if sg.enabled else 0.0
        fraction = (alpha if sg.reduce_flop else 1.0) if alpha > 0 else 0.0
        total += tokens_per_step * (stats.train_flops_per_token + fraction * stats.guide_train_flops_per_token)
        out.append(total)
    return out


def ffn_shares(cfg: Config) -> Dict[str, float]:
    """FFN parameters against the dense model's: all FFN weights+biases, and the structured
    layers' matrices alone (the paper's "32%" / "63%")."""
    m = cfg.model
    stats, dense = model_stats(m), model_stats(dense_equivalent(m))
    d, f = m.hidden_size, m.ffn_hidden_size
    n_fc1 = 2 if m.activation == "swiglu" else 1
    one = n_fc1 * structured_params(m.ffn.kind, d, f, m.ffn.rank, m.ffn.blocks) + \
        structured_params(m.ffn.kind, f, d, m.ffn.rank, m.ffn.blocks)
    one_dense = (n_fc1 + 1) * d * f
    return {"ffn_percent": 100.0 * stats.ffn_params / dense.ffn_params,
            "structured_percent": 100.0 * one / one_dense}


def config_path(recorded: str) -> str:
    """A record's config, relative to the repository; records written before the sweep moved
    out of tools/ name configs/sweep/, now experiments/sweep/configs/."""
    path = os.path.join(ROOT, recorded)
    moved = os.path.join(ROOT, "experiments", "sweep", "configs", os.path.basename(recorded))
    return moved if not os.path.isfile(path) and recorded.startswith("configs/sweep/") else path


def summarize(run_dir: str) -> Optional[Dict]:
    """One run's row and curves, or None when the run was never launched."""
    path = os.path.join(run_dir, RECORD_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        rec = json.load(f)
    row = dict(rec)
    try:
        cfg = load_config(config_path(rec["config"]), rec["overrides"])
    except Exception as error:   # a config that no longer loads: keep the record, say why
        row.setdefault("reason", f"config does not load: {error}")
        return row
    stats, plan_steps = model_stats(cfg.model), rec.get("planned_steps")
    tokens_per_step = cfg.training.global_batch_size * cfg.model.seq_length
    row.update(ffn=describe_ffn(cfg.model.ffn), params=stats.total_params, ffn_params=stats.ffn_params,
               guided=cfg.self_guided.enabled, **ffn_shares(cfg))
    scalars = read_scalars(run_dir, ("val/loss", "train/loss", "perf/tokens_per_s"))
    last_step = max([s for s, _ in scalars["val/loss"] + scalars["train/loss"]], default=0)
    flops = cumulative_flops(cfg, max(last_step, plan_steps or 0))
    row["val_curve"] = [[s, s * tokens_per_step, flops[s], v] for s, v in scalars["val/loss"]]
    row["train_curve"] = [[s, s * tokens_per_step, v] for s, v in scalars["train/loss"]]
    rates = [v for _, v in scalars["perf/tokens_per_s"]][1:] or [v for _, v in scalars["perf/tokens_per_s"]]
    row["tokens_per_s"] = _median(rates)
    if row["val_curve"]:
        step, tokens, spent, loss = row["val_curve"][-1]
        row.update(steps=step, tokens=tokens, train_flops=spent, val_loss=loss, val_ppl=math.exp(min(loss, 50.0)))
        if rec.get("status") == "ok" and plan_steps and step != plan_steps:
            row["status"], row["reason"] = "incomplete", f"last evaluation at step {step} of {plan_steps}"
    return row


def _median(values):
    if not values:
        return None
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


# ---------------------------------------------------------------------------------------
# The paper's expectations, checked on the numbers
# ---------------------------------------------------------------------------------------
def _loss(rows, name):
    row = rows.get(name)
    return row.get("val_loss") if row and row.get("status") == "ok" else None


def _loss_at(row, tokens: float) -> Optional[float]:
    """Validation loss at the evaluation nearest to `tokens`."""
    curve = row.get("val_curve") or []
    if not curve:
        return None
    return min(curve, key=lambda p: abs(p[1] - tokens))[3]


def _max_rise(row, after_fraction: float = 0.1) -> Optional[float]:
    """Largest increase of the (log-interval averaged) training loss from one logged
    window to the next, after the first `after_fraction` of the run: a spike measure."""
    curve = row.get("train_curve") or []
    if len(curve) < 3:
        return None
    start = after_fraction * curve[-1][0]
    losses = [v for s, _, v in curve if s >= start]
    return max((b - a for a, b in zip(losses, losses[1:])), default=0.0)


def expectations(runs: List[Dict]) -> List[Dict]:
    rows = {r["name"]: r for r in runs}
    out = []
    dense = _loss(rows, "dense")
    plain = ["lowrank_63", "blockdense_63", "blockshuffle_63", "lowrank_32", "blockdense_32", "blockshuffle_32"]
    losses = {n: _loss(rows, n) for n in plain}
    if dense is not None and all(v is not None for v in losses.values()):
        gaps = {n: v - dense for n, v in losses.items()}
        gap63 = sum(gaps[n] for n in plain[:3]) / 3
        gap32 = sum(gaps[n] for n in plain[3:]) / 3
        a = all(g > 0 for g in gaps.values())
        b = gap63 < gap32
        c = losses["lowrank_32"] < losses["blockshuffle_32"] and losses["blockdense_32"] < losses["blockshuffle_32"]
        out.append({"claim": "Dense best at equal tokens; 63% structured close to dense, 32% further behind; "
                             "at 32% LowRank and BlockDense ahead of BlockShuffle",
                    "held": a and b and c,
                    "evidence": f"dense best: {'yes' if a else 'no'}; mean loss gap to dense 63% {gap63:+.3f} vs "
                                f"32% {gap32:+.3f} ({'yes' if b else 'no'}); 32%: LowRank {gaps['lowrank_32']:+.3f}, "
                                f"BlockDense {gaps['blockdense_32']:+.3f}, BlockShuffle {gaps['blockshuffle_32']:+.3f} "
                                f"({'yes' if c else 'no'})"})
    else:
        out.append({"claim": "Dense best at equal tokens; 63% close to dense; 32% further behind, LowRank and "
                             "BlockDense ahead of BlockShuffle", "held": None,
                    "evidence": "not all of the seven equal-token runs finished"})
    lr32, sgt, flops = _loss(rows, "lowrank_32"), _loss(rows, "lowrank_32_sgt"), _loss(rows, "lowrank_32_flops")
    if None not in (dense, lr32, sgt):
        gap = lr32 - dense
        ppl_gap, ppl_sgt = math.exp(lr32) - math.exp(dense), math.exp(sgt) - math.exp(dense)
        closed = f"{100 * (lr32 - sgt) / gap:.0f}% of the gap closed" if gap > 0 else \
            "no gap to close: LowRank 32% is not behind dense"
        extra = f"; LowRank 32% without guidance at the same FLOPs (more tokens): {flops - dense:+.3f} " \
                f"({math.exp(flops) - math.exp(dense):+.2f} PPL)" if flops is not None else ""
        out.append({"claim": "Self-guided training at the same FLOPs closes at least half of the gap between "
                             "LowRank 32% and dense",
                    "held": bool(gap > 0 and (lr32 - sgt) / gap >= 0.5) if gap > 0 else None,
                    "evidence": f"loss gap to dense: LowRank 32% {gap:+.3f} ({ppl_gap:+.2f} PPL), self-guided "
                                f"{sgt - dense:+.3f} ({ppl_sgt:+.2f} PPL): {closed}" + extra})
    else:
        out.append({"claim": "Self-guided training at the same FLOPs closes at least half of the gap",
                    "held": None, "evidence": "dense, LowRank 32% or its self-guided run did not finish"})
    out.append(_early_expectation(rows))
    return out


def _early_expectation(rows) -> Dict:
    claim = ("Early in training, structured layers without guidance are slower or spikier than dense; "
             "with guidance, close to dense")
    d = rows.get("dense")
    if not d or not d.get("val_curve"):
        return {"claim": claim, "held": None, "evidence": "no dense curve"}
    quarter = 0.25 * d["val_curve"][-1][1]
    d_early, d_rise = _loss_at(d, quarter), _max_rise(d)
    parts, unguided_slow, early = [], [], {}
    for name in ("lowrank_32", "blockdense_32", "blockshuffle_32", "lowrank_32_sgt"):
        r = rows.get(name)
        if not r or not r.get("val_curve"):
            continue
        early[name] = _loss_at(r, quarter) - d_early
        final = r["val_curve"][-1][3] - d["val_curve"][-1][3] if name != "lowrank_32_sgt" else None
        rise = _max_rise(r)
        parts.append(f"{name} {early[name]:+.3f} at 25% of the tokens"
                     + (f" / {final:+.3f} at the end" if final is not None else "")
                     + (f", largest train-loss rise {rise:.3f}" if rise is not None else ""))
        if name != "lowrank_32_sgt":
            unguided_slow.append(early[name] > 0 or (rise is not None and d_rise is not None and rise > d_rise))
    if "lowrank_32" not in early or "lowrank_32_sgt" not in early:
        return {"claim": claim, "held": None, "evidence": "; ".join(parts) or "runs missing"}
    guided_close = early["lowrank_32_sgt"] <= 0.5 * max(early["lowrank_32"], 0.0)
    held = all(unguided_slow) and guided_close
    return {"claim": claim, "held": held,
            "evidence": "validation loss minus dense's at the same tokens: " + "; ".join(parts)
                        + (f"; dense's largest train-loss rise {d_rise:.3f}" if d_rise is not None else "")}


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------
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


def markdown(report: Dict) -> str:
    env, s = report["environment"], report["settings"]
    lines = [f"# Results: dense vs structured FFNs vs self-guided training ({s['family_name']})", "",
             f"Generated by `{s['command']}` on {env.get('date', '?')}.", "",
             f"**Device** {env.get('device', '?')} | torch {env.get('torch', '?')} (CUDA {env.get('cuda', '-')}) | "
             f"deepspeed {env.get('deepspeed', '?')} | Python {env.get('python', '?')}"
             + (f" | commit {env['commit']}" if env.get("commit") else ""), "",
             "## Setup", "", s["setup"], "",
             "## Table", "",
             "| run | FFN | params | FFN params | FFN % of dense | structured % | tokens | training FLOPs | "
             "val loss | val PPL | tokens/s | wall s | status |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in report["runs"]:
        status = r.get("status", "?") + (f": {r['reason']}" if r.get("reason") and r.get("status") != "ok" else "")
        lines.append(
            f"| {r['name']} | {r.get('ffn', '')}{' + self-guided' if r.get('guided') else ''} | "
            f"{_count(r.get('params'))} | {_count(r.get('ffn_params'))} | "
            f"{_fmt(r.get('ffn_percent'), '.0f')}{'%' if r.get('ffn_percent') else ''} | "
            f"{_fmt(r.get('structured_percent'), '.0f')}{'%' if r.get('structured_percent') else ''} | "
            f"{_count(r.get('tokens'))} | "
            f"{_fmt(r.get('train_flops') and r['train_flops'], '.3e')} | {_fmt(r.get('val_loss'), '.4f')} | "
            f"{_fmt(r.get('val_ppl'), '.2f')} | {_fmt(r.get('tokens_per_s'), ',.0f')} | "
            f"{_fmt(r.get('wall_s'), '.0f')} | {status} |")
    lines += ["", "FFN % of dense: all FFN weights and biases (the first layer's dense FFN included) against "
              "the dense model's; structured %: one structured layer's matrices against a dense layer's (the "
              "paper's 32% / 63%). Tokens and FLOPs are those trained (the self-guided run's repeat phase "
              "included); FLOPs follow model/accounting.py (6 x matmul params + attention scores per token, "
              "plus the guide's expected share). Val loss/PPL: the last evaluation, on the held-out split. "
              "tokens/s: median over log windows after the first (self-guided: guided and plain steps mixed).",
              "", "## Does it learn like the paper?", ""]
    for e in report["expectations"]:
        verdict = {True: "**held**", False: "**did not hold**", None: "**not measured**"}[e["held"]]
        lines.append(f"- {e['claim']}: {verdict}. {e['evidence']}.")
    lines += ["", f"![validation loss against tokens and FLOPs]({os.path.basename(report['plot'])})", "",
              "Left: validation loss against tokens trained; middle: against training FLOPs; right: training "
              "loss (log-interval means) over the first half of the dense run's tokens.", "",
              "## Reproduce", "", "```bash", *s["reproduce"], "```", ""]
    return "\n".join(lines)


STYLE = {  # name -> (colour, line style)
    "dense": ("black", "-"), "lowrank_63": ("tab:blue", "-"), "lowrank_32": ("tab:blue", "--"),
    "blockdense_63": ("tab:orange", "-"), "blockdense_32": ("tab:orange", "--"),
    "blockshuffle_63": ("tab:green", "-"), "blockshuffle_32": ("tab:green", "--"),
    "lowrank_32_sgt": ("tab:red", "-"), "lowrank_32_flops": ("tab:purple", ":"),
}
EARLY = ("dense", "lowrank_32", "blockdense_32", "blockshuffle_32", "lowrank_32_sgt")


PLOTS_EXTRA = 'pip install -e ".[plots]"'


def require_matplotlib() -> None:
    """matplotlib is an optional dependency: stop with one line naming the extra that installs it
    (called before any training, so a sweep never runs for minutes and then lacks its plots)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit(f"error: the sweep report draws its plots with matplotlib, which is not installed: "
                         f"{PLOTS_EXTRA}") from None


def plot(report: Dict, path: str) -> None:
    require_matplotlib()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = [r for r in report["runs"] if r.get("val_curve")]
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.2))
    finals = [r["val_curve"][-1][3] for r in runs]
    for r in runs:
        colour, style = STYLE.get(r["name"], (None, "-"))
        xs = [p[1] / 1e6 for p in r["val_curve"]]
        fs = [p[2] for p in r["val_curve"]]
        ys = [p[3] for p in r["val_curve"]]
        label = r["name"] if r["name"] == "dense" else \
            f"{r['name']}: {r.get('ffn', '')}, {r.get('structured_percent', 0):.0f}%"
        axes[0].plot(xs, ys, style, color=colour, marker=".", label=label)
        axes[1].plot(fs, ys, style, color=colour, marker=".", label=label)
        if r["name"] in EARLY and r.get("train_curve"):
            dense = next((d for d in runs if d["name"] == "dense"), r)
            limit = 0.5 * dense["val_curve"][-1][1]
            pts = [(t / 1e6, v) for _, t, v in r["train_curve"] if t <= limit]
            if pts:
                axes[2].plot(*zip(*pts), style, color=colour, label=label)
    if finals:   # zoom on where the runs differ; the early-loss panel keeps its own scale
        low, high = min(finals) - 0.05, min(finals) + 1.2
        for ax in axes[:2]:
            ax.set_ylim(low, high)
    axes[0].set(xlabel="tokens trained (M)", ylabel="validation loss", title="validation loss vs tokens")
    axes[1].set(xlabel="training FLOPs", ylabel="validation loss", title="validation loss vs training FLOPs")
    axes[2].set(xlabel="tokens trained (M)", ylabel="training loss (log-interval mean)",
                title="training loss, first half of the dense run's tokens")
    for ax in axes:
        ax.grid(alpha=0.3)
    if runs:
        axes[0].legend(fontsize=7)
    env = report["environment"]
    fig.suptitle(f"{report['settings']['family_name']} on {env.get('device', '?')}, torch {env.get('torch', '?')}, "
                 f"deepspeed {env.get('deepspeed', '?')}, {env.get('date', '')[:10]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(runs: List[Dict], environment: Dict, settings: Dict, out_dir: str) -> Dict:
    os.makedirs(out_dir, exist_ok=True)
    report = {"environment": environment, "settings": settings, "runs": runs,
              "expectations": expectations(runs), "plot": os.path.join(out_dir, "results.png")}
    plot(report, report["plot"])
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown(report))
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({**report, "plot": os.path.basename(report["plot"])}, f, indent=1)
        f.write("\n")
    return report
