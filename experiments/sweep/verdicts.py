"""The paper's expectations checked on the final validation losses, against the seed spread.

A *group* is one setting at one budget (x1: the dense run's tokens, x4: four times that);
its loss is the mean over its seeds. Its **spread** is max - min of its seeds' final
validation losses (three seeds: about 1.7 standard deviations of one run's loss). A group
with one seed is given the **assumed spread**: the largest spread measured on any group
with two or more seeds. An expected ordering "A below B" compares mean(B) - mean(A) with
the larger spread of the two (with a midpoint of two groups, the largest of the three):

  held                   the difference exceeds the spread, in the expected direction
  did not hold           it exceeds the spread, the other way
  within the seed spread otherwise: these runs cannot tell
  not measured           a group has no finished run

An expectation made of several orderings holds when all hold, did not hold when any went
the other way, and is within the seed spread otherwise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

KINDS = ("lowrank", "blockdense", "blockshuffle")
HELD, REVERSED, WITHIN, MISSING = "held", "did not hold", "within the seed spread", "not measured"


@dataclass
class Group:
    setting: str
    budget: str
    losses: List[float] = field(default_factory=list)
    seeds: List[int] = field(default_factory=list)
    label: Optional[str] = None

    @property
    def name(self) -> str:
        return self.label or (self.setting + ("" if self.budget == "x1" else f" ({self.budget})"))

    @property
    def mean(self) -> float:
        return sum(self.losses) / len(self.losses)

    @property
    def spread(self) -> Optional[float]:
        """max - min over seeds; None with one seed."""
        return max(self.losses) - min(self.losses) if len(self.losses) >= 2 else None


def groups(rows: Sequence[Dict]) -> Dict[Tuple[str, str], Group]:
    """(setting, budget) -> Group of the finished runs (status ok with a final validation loss)."""
    out: Dict[Tuple[str, str], Group] = {}
    for r in rows:
        if r.get("status") != "ok" or r.get("val_loss") is None:
            continue
        budget = f"x{r.get('scale', 1)}"
        g = out.setdefault((r.get("setting", r["name"]), budget), Group(r.get("setting", r["name"]), budget))
        g.losses.append(r["val_loss"])
        g.seeds.append(r.get("seed"))
    return out


def assumed_spread(found: Dict[Tuple[str, str], Group]) -> Optional[float]:
    spreads = [g.spread for g in found.values() if g.spread is not None]
    return max(spreads) if spreads else None


@dataclass
class Comparison:
    lower: str                    # expected lower validation loss
    upper: str
    lower_loss: Optional[float]
    upper_loss: Optional[float]
    noise: Optional[float]
    assumed: bool                 # a one-seed group used the assumed spread
    verdict: str

    @property
    def diff(self) -> Optional[float]:
        return None if self.lower_loss is None or self.upper_loss is None else self.upper_loss - self.lower_loss

    def text(self) -> str:
        if self.verdict == MISSING:
            return f"{self.lower} < {self.upper}: {MISSING}"
        ppl = math.exp(self.upper_loss) - math.exp(self.lower_loss)
        noise = "no spread measured" if self.noise is None else \
            f"spread {self.noise:.3f}{' (assumed)' if self.assumed else ''}"
        return (f"{self.lower} {self.lower_loss:.3f} < {self.upper} {self.upper_loss:.3f}: difference "
                f"{self.diff:+.3f} ({ppl:+.2f} PPL) vs {noise}: {self.verdict}")


def _noise(members: Sequence[Group], assumed: Optional[float]) -> Tuple[Optional[float], bool]:
    spreads = [g.spread if g.spread is not None else assumed for g in members]
    used_assumed = any(g.spread is None for g in members)
    known = [s for s in spreads if s is not None]
    return (max(known) if len(known) == len(spreads) else None), used_assumed


def compare(lower: Optional[Group], upper: Optional[Group], assumed: Optional[float],
            lower_name: str = "", upper_name: str = "", members: Sequence[Group] = ()) -> Comparison:
    """Is `lower`'s mean loss below `upper`'s by more than the spread? `members` are the groups
    whose spreads count (default: the two compared)."""
    if lower is None or upper is None:
        return Comparison(lower.name if lower else lower_name, upper.name if upper else upper_name,
                          None, None, None, False, MISSING)
    noise, used_assumed = _noise(members or (lower, upper), assumed)
    diff = upper.mean - lower.mean
    if noise is None:
        verdict = WITHIN            # nothing to measure noise with: no claim either way
    elif diff > noise:
        verdict = HELD
    elif diff < -noise:
        verdict = REVERSED
    else:
        verdict = WITHIN
    return Comparison(lower.name, upper.name, lower.mean, upper.mean, noise, used_assumed, verdict)


def midpoint(a: Optional[Group], b: Optional[Group]) -> Optional[Group]:
    """A pseudo-group halfway between two (for "closes at least half of the gap")."""
    if a is None or b is None:
        return None
    return Group(a.setting, a.budget, [0.5 * (a.mean + b.mean)], label=f"midpoint({a.name}, {b.name})")


def overall(comparisons: Sequence[Comparison]) -> str:
    verdicts = [c.verdict for c in comparisons]
    if not verdicts or MISSING in verdicts:
        return MISSING
    if REVERSED in verdicts:
        return REVERSED
    return HELD if all(v == HELD for v in verdicts) else WITHIN


def _expectation(claim: str, comparisons: List[Comparison], note: str = "") -> Dict:
    return {"claim": claim, "verdict": overall(comparisons), "note": note,
            "comparisons": [dict(c.__dict__, diff=c.diff, text=c.text()) for c in comparisons]}


def _gap_closed(found, kind: str, budget: str, assumed) -> Tuple[Comparison, str]:
    dense, plain, sgt = (found.get((n, budget)) for n in ("dense", f"{kind}_32", f"{kind}_32_sgt"))
    mid = midpoint(plain, dense)
    c = compare(sgt, mid, assumed, f"{kind}_32_sgt", f"midpoint({kind}_32, dense)",
                members=[g for g in (sgt, plain, dense) if g is not None])
    share = ""
    if None not in (dense, plain, sgt) and plain.mean > dense.mean:
        share = f"{kind}: {100 * (plain.mean - sgt.mean) / (plain.mean - dense.mean):.0f}% of the gap closed"
    return c, share


def expectations(rows: Sequence[Dict]) -> List[Dict]:
    found = groups(rows)
    assumed = assumed_spread(found)
    get = lambda name, budget="x1": found.get((name, budget))          # noqa: E731
    out = []
    out.append(_expectation(
        "Dense is best at equal tokens (all six structured settings behind it)",
        [compare(get("dense"), get(f"{k}_{s}"), assumed, "dense", f"{k}_{s}") for s in (63, 32) for k in KINDS]))
    out.append(_expectation(
        "63% structured is closer to dense than 32% (each kind)",
        [compare(get(f"{k}_63"), get(f"{k}_32"), assumed, f"{k}_63", f"{k}_32") for k in KINDS]))
    out.append(_expectation(
        "At the same share, LowRank is ahead of BlockDense, and BlockDense ahead of BlockShuffle (Table 1)",
        [compare(get(f"{a}_{s}"), get(f"{b}_{s}"), assumed, f"{a}_{s}", f"{b}_{s}")
         for s in (32, 63) for a, b in (("lowrank", "blockdense"), ("blockdense", "blockshuffle"))]))
    closed = [_gap_closed(found, k, "x1", assumed) for k in KINDS]
    flops, lr32_sgt = get("lowrank_32_flops"), get("lowrank_32_sgt")
    note = "; ".join(s for _, s in closed if s)
    if flops and lr32_sgt:
        note += (f"{'; ' if note else ''}for reference, lowrank_32 without guidance on the dense run's FLOPs "
                 f"(more tokens): {flops.mean:.3f}, self-guided {lr32_sgt.mean:.3f}")
    out.append(_expectation(
        "Self-guided training at the dense run's FLOPs closes at least half of the 32% gap to dense "
        "(each kind: below the midpoint of the unguided run and dense)", [c for c, _ in closed], note))
    long_closed, long_share = _gap_closed(found, "lowrank", "x4", assumed)
    out.append(_expectation(
        "At 4x the tokens: dense ahead of LowRank 32%, and self-guided LowRank 32% closes at least half of "
        "that gap",
        [compare(get("dense", "x4"), get("lowrank_32", "x4"), assumed, "dense (x4)", "lowrank_32 (x4)"),
         long_closed], long_share))
    return out
