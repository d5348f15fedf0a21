"""bench_train.py --guided: a self-guided run's guided phase against its unguided phase.

The training loop logs the *expected* guide FLOPs (a per step with reduce_flop). A guided
step's real cost depends on which layers drew the guide, so here each timed step's guides
are replayed with the loop's own draw (structured/guide.py GuideState, keyed by the
model's layer ids) and counted: MFU of the guided phase = FLOPs the steps executed / time.

A compiled run compiles a graph for each combination of an FFN's draws the first time it
occurs, which can be well inside the guided phase (at a = 0.9 a layer skips both guides
with probability 0.01): such a step costs seconds, not milliseconds (1.75 s against ~0.15 s
on an H200). Steps whose record says graphs were compiled in them (`compiled_graphs` rose,
training/loop.py) are left out of both phases and listed; a user's run pays them once.
"""
from __future__ import annotations

from typing import Dict, List

from megatron_sffn.config import Config
from megatron_sffn.model.accounting import model_stats
from megatron_sffn.model.block import FC1, FC2, GATE, SLOTS, ffn_kind_for_layer
from megatron_sffn.structured.guide import GuideState
from megatron_sffn.training.phases import RunPhases


def guide_linears(cfg: Config) -> List[tuple]:
    """(layer_id, in, out) of every guided FFN linear, with the layer ids the model gives them."""
    m, out = cfg.model, []
    d, f = m.hidden_size, m.ffn_hidden_size
    slots = [(FC1, d, f), (FC2, f, d)] + ([(GATE, d, f)] if m.activation == "swiglu" else [])
    for layer in range(m.num_layers):
        if ffn_kind_for_layer(m, layer) != "dense":
            out += [(layer * SLOTS + slot, n_in, n_out) for slot, n_in, n_out in slots]
    return out


def executed_guide_flops_per_token(cfg: Config, step: int, guided_steps: int) -> float:
    """Training FLOPs per token of the dense guides optimizer step `step` computes (6 per weight)."""
    sg = cfg.self_guided
    state = GuideState(active=True, seed=cfg.training.seed, reduce_flop=sg.reduce_flop)
    state.set_step(step, guided_steps, sg.schedule)
    return sum(6.0 * n_in * n_out for lid, n_in, n_out in guide_linears(cfg) if state.use_guide(lid))


def _phase(records: Dict[int, Dict], steps: List[int], flops_per_step, nproc: int, peak) -> Dict:
    """Totals over a phase's steps (their cost varies, so sums rather than a median)."""
    if not steps:
        return {"steps": [], "tokens_per_s": None, "tflops_per_gpu": None, "mfu": None}
    seconds = sum(records[s]["step_time_s"] for s in steps)
    tflops = sum(flops_per_step(s) for s in steps) / seconds / nproc / 1e12
    return {"steps": steps, "seconds": seconds, "tflops_per_gpu": tflops, "mfu": tflops / peak if peak else None}


def summarise_phases(cfg: Config, records: Dict[int, Dict], warmup: int, tokens_per_step: int,
                     nproc: int, peak) -> Dict:
    """Guided steps (a > 0) and unguided steps (after the drop), each without its first `warmup`.

    Record `s` of metrics.jsonl is optimizer step s - 1 (the loop counts after the step)."""
    phases = RunPhases.from_config(cfg)
    guided_steps = phases.guided_steps
    for s, r in records.items():
        if s <= guided_steps and abs((r.get("guide_alpha") or 0.0) - phases.alpha(s - 1)) > 1e-9:
            raise ValueError(f"step {s}: logged guide weight {r.get('guide_alpha')} is not the plan's "
                             f"{phases.alpha(s - 1)}: the run's self-guided plan differs from this config's")
    stats = model_stats(cfg.model)
    base = stats.train_flops_per_token
    guide = {s: executed_guide_flops_per_token(cfg, s - 1, guided_steps) for s in records if s <= guided_steps}
    compiling = compile_steps(records)
    guided = [s for s in sorted(records) if warmup < s <= guided_steps and s not in compiling]
    unguided = [s for s in sorted(records) if s > guided_steps + warmup and s not in compiling]
    g = _phase(records, guided, lambda s: (base + guide[s]) * tokens_per_step, nproc, peak)
    u = _phase(records, unguided, lambda s: base * tokens_per_step, nproc, peak)
    for phase in (g, u):
        if phase["steps"]:
            phase["tokens_per_s"] = tokens_per_step * len(phase["steps"]) / phase["seconds"]
    if guided:
        g["guide_fraction_executed"] = sum(guide[s] for s in guided) / len(guided) / stats.guide_train_flops_per_token
        g["mean_alpha"] = sum(phases.alpha(s - 1) for s in guided) / len(guided)
    # = the MFU ratio (same peak); defined on CPU too, where there is no peak
    ratio = g["tflops_per_gpu"] / u["tflops_per_gpu"] if g["tflops_per_gpu"] and u["tflops_per_gpu"] else None
    return {"guided_steps_planned": guided_steps, "guided_phase": g, "unguided_phase": u,
            "guided_mfu_over_unguided": ratio, "compile_steps_excluded": sorted(s for s in compiling if s > warmup)}


def compile_steps(records: Dict[int, Dict]) -> set:
    """Steps in which the run compiled graphs: the record's running count rose over the previous one."""
    out, before = set(), None
    for s in sorted(records):
        count = records[s].get("compiled_graphs")
        if count is not None and before is not None and count > before:
            out.add(s)
        before = count if count is not None else before
    return out
