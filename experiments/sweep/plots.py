"""results.png: validation loss against tokens and against training FLOPs, one line per setting
(the mean over its seeds, the band between its best and worst seed), one row per budget.

matplotlib is optional for the package; the sweep needs it and says which extra installs it.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

PLOTS_EXTRA = 'pip install -e ".[plots]"'

COLOUR = {"dense": "black", "lowrank": "tab:blue", "blockdense": "tab:orange", "blockshuffle": "tab:green"}


def require_matplotlib() -> None:
    """Stop with one line naming the extra that installs matplotlib (called before any training,
    so a sweep never runs for minutes and then lacks its plots)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit(f"error: the sweep report draws its plots with matplotlib, which is not installed: "
                         f"{PLOTS_EXTRA}") from None


def style(setting: str):
    """Colour by kind; solid 63%, dashed 32%, dash-dot self-guided, dotted the FLOP-matched run."""
    kind = setting.split("_")[0]
    line = "-" if setting == "dense" or "_63" in setting else \
        "-." if setting.endswith("_sgt") else ":" if setting.endswith("_flops") else "--"
    return COLOUR.get(kind, "grey"), line


def mean_curve(rows: Sequence[Dict]) -> List[List[float]]:
    """[tokens, flops, mean loss, min loss, max loss] at the evaluation steps all seeds share."""
    by_step = [{p[0]: p for p in r["val_curve"]} for r in rows]
    steps = sorted(set.intersection(*(set(c) for c in by_step)))
    out = []
    for s in steps:
        losses = [c[s][3] for c in by_step]
        out.append([by_step[0][s][1], sum(c[s][2] for c in by_step) / len(by_step), sum(losses) / len(losses),
                    min(losses), max(losses)])
    return out


def _by_group(runs: Sequence[Dict], budget: int) -> Dict[str, List[Dict]]:
    out: Dict[str, List[Dict]] = {}
    for r in runs:
        if r.get("val_curve") and r.get("scale", 1) == budget and r.get("status") in ("ok", "incomplete"):
            out.setdefault(r.get("setting", r["name"]), []).append(r)
    return out


def plot(report: Dict, path: str) -> None:
    require_matplotlib()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    budgets = sorted({r.get("scale", 1) for r in report["runs"] if r.get("val_curve")}) or [1]
    fig, axes = plt.subplots(len(budgets), 2, figsize=(15, 5.2 * len(budgets)), squeeze=False)
    for row, budget in zip(axes, budgets):
        finals = []
        for setting, rows in _by_group(report["runs"], budget).items():
            curve = mean_curve(rows)
            if not curve:
                continue
            colour, line = style(setting)
            label = f"{setting} ({len(rows)} seeds)" if len(rows) > 1 else setting
            for ax, x in ((row[0], [p[0] / 1e6 for p in curve]), (row[1], [p[1] for p in curve])):
                ax.plot(x, [p[2] for p in curve], line, color=colour, marker=".", label=label)
                if len(rows) > 1:
                    ax.fill_between(x, [p[3] for p in curve], [p[4] for p in curve], color=colour, alpha=0.2)
            finals.append(curve[-1][2])
        scale = "budget x1: the dense run's tokens" if budget == 1 else f"budget x{budget}: {budget} x the tokens"
        row[0].set(xlabel="tokens trained (M)", ylabel="validation loss", title=f"vs tokens ({scale})")
        row[1].set(xlabel="training FLOPs", ylabel="validation loss", title=f"vs training FLOPs ({scale})")
        for ax in row:
            ax.grid(alpha=0.3)
            if finals:       # zoom on where the runs differ
                ax.set_ylim(min(finals) - 0.05, min(finals) + 1.2)
        if finals:
            row[0].legend(fontsize=7)
    env = report["environment"]
    fig.suptitle(f"{report['settings']['family_name']} on {env.get('device', '?')}, torch {env.get('torch', '?')}, "
                 f"{env.get('date', '')[:10]}; bands: best to worst seed", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
