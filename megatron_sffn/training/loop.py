"""The training run: config -> distributed state -> data -> DeepSpeed engine -> loop of steps.

The loop itself is short and calls named steps (train step, guide phase, log, evaluate,
checkpoint, stop checks); each lives in its own module. Everything a step depends on (LR,
guide weight, reduce_flop draw, data samples) is a pure function of the step number, so a
resumed run repeats the uninterrupted one exactly.

A step does not wait for the device: its loss, gradient norm and skip flag stay device tensors
(TrainEngine.train_batch_deferred / step_outcome) in a queue of pending steps, which `settle()`
reads in one transfer at each log step and before anything that needs them (evaluation, a
checkpoint, a stop, the end). Settling then does, step by step and in order, what each step
used to do at once: the metrics.jsonl line (the same values), the log window, the non-finite
count and its stop. Skipping itself is decided on the device (the fused optimizer's found_inf).
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch

from ..config import (Config, optimizer_update_chosen_because, sequence_parallel_chosen_because,
                      speed_chosen_because)
from ..model.accounting import model_stats, train_flops_per_token
from ..model.compile import compiled_graph_count
from ..model.paper import describe_ffn
from ..structured.guide import GuideState
from .checkpointing import CheckpointManager
from .data_feed import DataFeed
from .faults import NonFiniteGuard, StopRequests
from .lr_schedule import learning_rate
from .metrics import RunLogger, StepTimer, detect_peak_tflops, format_train_line, max_allocated_gb, max_reserved_gb, memory_gb
from .phases import RunPhases
from .profiling import StepProfiler
from .resume_point import resume_point

INJECT_ENV = "MEGATRON_SFFN_INJECT_NONFINITE_STEPS"  # testing aid: "3,4" makes steps 3 and 4 non-finite


class TrainingStopped(RuntimeError):
    """The run stopped on an unrecoverable condition (e.g. too many non-finite steps)."""


@dataclass
class LoopState:
    step: int = 0                 # optimizer steps done
    consumed_tokens: int = 0
    guides_dropped: bool = False


@dataclass
class RunResult:
    steps: int
    consumed_tokens: int
    final_val_loss: Optional[float]
    stopped_early: Optional[str]
    train_losses: Dict[int, float]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _inject_steps() -> set:
    raw = os.environ.get(INJECT_ENV, "")
    return {int(s) for s in raw.split(",") if s.strip()}


class Trainer:
    """Holds the run's components; `run()` is the loop."""

    def __init__(self, cfg: Config, notes: Optional[List[str]] = None):
        from .startup_watch import StartupWatch
        self.cfg = cfg
        self.notes = list(notes or [])   # banner lines from the launcher (--layout auto's choice)
        watch = StartupWatch().start()
        try:
            self._start(cfg, watch)
        finally:
            watch.close()

    def _start(self, cfg: Config, watch) -> None:
        """Everything before the first step; each wait on other processes runs in a watched phase."""
        from ..parallel.topology import build_parallel_state, init_distributed
        from .engine import TrainEngine
        from .startup_watch import rendezvous_description

        with watch.phase(*rendezvous_description()):
            init_distributed()
            self.state = build_parallel_state(cfg)  # layout errors stop here, before any tensors
        seed_everything(cfg.training.seed)
        self.phases = RunPhases.from_config(cfg)
        run_dir = cfg.output.run_dir
        self.ckpt = CheckpointManager(os.path.join(run_dir, "checkpoints"), cfg.training.keep_last, self.state.rank)
        tag, meta, self.optimizer_note = resume_point(cfg, self.state, self.ckpt, run_dir)
        # the data before the run folder: a data problem stops every rank and leaves nothing behind
        self.feed = DataFeed(cfg, self.state, self.phases, show_progress=self.state.is_logging_rank, watch=watch)
        self.logger = RunLogger(run_dir, self.state.is_logging_rank, cfg.output.tensorboard,
                                resumed_step=meta["step"] if meta else None)
        sg = cfg.self_guided
        guided = sg.enabled and not (meta and meta["loop"]["guides_dropped"])
        self.guide_state = GuideState(active=guided, seed=cfg.training.seed, reduce_flop=sg.reduce_flop)
        with watch.phase("the DeepSpeed engine (its JIT-built ops, then every rank for the parameter broadcast)"):
            self.engine = TrainEngine.build(cfg, self.state, self.guide_state, guided=guided)
        self.loop = LoopState()
        self.guard = NonFiniteGuard(cfg.training.max_nonfinite_steps)
        self.resumed_from = None
        if tag is not None:
            with watch.phase(f"every rank to load checkpoint {os.path.join(self.ckpt.directory, tag)}"):
                client = self.ckpt.load(self.engine, tag)
            self.loop = LoopState(**client["loop"])
            self.guard.load_state_dict(client["nonfinite"])
            self.resumed_from = tag
        self.stats = model_stats(cfg.model)
        self.peak_tflops = detect_peak_tflops(cfg.training.peak_tflops_per_gpu)
        self.device = _device()
        self.train_losses: Dict[int, float] = {}
        self._pending: List[Dict] = []  # steps whose device values are not read yet (settle)
        self._window = _new_window()
        self._inject = _inject_steps()  # read once: the environment does not change mid-run
        self.profiler = StepProfiler(cfg.training.profile, self.state.rank, run_dir)

    # -- named steps ---------------------------------------------------------------------
    def banner(self) -> None:
        cfg, st, plan = self.cfg, self.state, self.phases.plan
        m = cfg.model
        tokens_per_step = cfg.training.global_batch_size * m.seq_length
        lines = [
            "=" * 100,
            f"megatron_sffn run '{cfg.name}' -> {cfg.output.run_dir}",
            f"model      {self.stats.total_params / 1e6:,.1f}M params ({self.stats.non_embedding_params / 1e6:,.1f}M "
            f"non-embedding, FFN {self.stats.ffn_params / 1e6:,.1f}M) | width {m.hidden_size} x {m.num_layers} layers, "
            f"{m.num_heads} heads ({m.kv_heads} kv), ffn {m.ffn_hidden_size}, seq {m.seq_length}",
            f"ffn        {describe_ffn(m.ffn)} (first layer {'dense' if m.ffn.first_layer_dense else 'structured'})"
            + (f" | self-guided: {plan.guided_steps} guided steps ({cfg.self_guided.schedule}), "
               f"{plan.repeat_steps} repeat steps, reduce_flop={cfg.self_guided.reduce_flop}"
               if cfg.self_guided.enabled else ""),
            f"layout     world {st.world_size} = tensor {st.tensor_size} x pipeline {st.pipe_size} x data "
            f"{st.data_size}" + (f", sequence parallel: {self.sequence_parallel_state()}" if st.tensor_size > 1 else "")
            + f" | ZeRO {cfg.parallel.zero_stage} | {cfg.training.precision} | optimizer "
            f"{cfg.optimizer.implementation}" + (f", update compiled ({optimizer_update_chosen_because(cfg)})"
                                                 if cfg.optimizer.update == "compiled" else "")
            + (", reading the bf16 gradients (no fp32 buffer)" if self.engine.gradients_skip_buffer else "")
            + (" | torch.compile of the blocks" if cfg.training.compile else "")
            + (", replayed as CUDA graphs" if cfg.training.cuda_graphs else "")
            + (" once the guides drop" if cfg.training.cuda_graphs and cfg.self_guided.enabled
               and cfg.self_guided.reduce_flop else ""),
            *self.notes,
            *self.layout_hints(),
            *([self.profiler.describe()] if self.profiler.describe() else []),
            self.speed_line(),
            *self.fp8_lines(),
            f"data       {', '.join(self.feed.prefixes)} | tokenizer {self.feed.tokenizer_path}",
            f"batch      global {cfg.training.global_batch_size} x {m.seq_length} = {tokens_per_step:,} tokens/step, "
            f"micro {cfg.training.micro_batch_size}, grad accumulation "
            f"{cfg.training.global_batch_size // (cfg.training.micro_batch_size * st.data_size)}",
            f"plan       {plan.total_steps:,} steps, {plan.total_steps * tokens_per_step:,} tokens, "
            f"{plan.total_flops:.3e} FLOPs" + (f" (budget {plan.budget_flops:.3e})" if plan.budget_flops else ""),
        ]
        if self.resumed_from:
            lines.append(f"resume     from {self.resumed_from} at step {self.loop.step}, "
                         f"{self.loop.consumed_tokens:,} tokens")
        if self.optimizer_note:
            lines.append(f"optimizer  {self.optimizer_note}")
        lines.append("=" * 100)
        self.logger.print("\n".join(lines))
        self.logger.config({**cfg.to_dict(), "resolved_data": {"paths": self.feed.prefixes,
                                                               "tokenizer": self.feed.tokenizer_path}})

    def sequence_parallel_state(self) -> str:
        """on (auto, tensor > 1) | off (auto: ZeRO 3) | off (parallel.sequence_parallel = false)"""
        why = sequence_parallel_chosen_because(self.cfg)
        return ("on" if self.state.tp.sequence_sharded else "off") + (f" ({why})" if why else "")

    def layout_hints(self) -> List[str]:
        """What the layout leaves on the table."""
        st = self.state
        if st.tensor_size > 1 and not st.tp.sequence_sharded:
            how = ("--sequence-parallel shards them" if not sequence_parallel_chosen_because(self.cfg).startswith("auto")
                   else "a tensor size dividing model.seq_length, and ZeRO below 3, let auto shard them")
            return [f"hint       tensor {st.tensor_size} without sequence parallelism: every tensor rank repeats the "
                    f"norms and residual adds on all tokens; {how} (docs/performance.md, Tensor parallelism)"]
        return []

    def speed_line(self) -> str:
        """compile: on (auto, CUDA) | CUDA graphs: off (auto: needs ...): what runs, and why."""
        t, why = self.cfg.training, speed_chosen_because(self.cfg)
        def state(key: str, on: bool) -> str:
            return f"{'on' if on else 'off'}" + (f" ({why[key]})" if key in why else "")
        return (f"speed      compile: {state('compile', t.compile)} | CUDA graphs: {state('cuda_graphs', t.cuda_graphs)}"
                + (f" | C++ wrapper: {state('cpp_wrapper', t.cpp_wrapper)}" if t.compile else "")
                + (f" | {self.regions_line()}" if t.compile and t.blocks_per_region > 1 else ""))

    def regions_line(self) -> str:
        """blocks per compiled region: 4 (auto, tensor > 1) | or 1 (auto: why not), or with
        "training.blocks_per_region = 4" where the config named the number."""
        e, why = self.engine, speed_chosen_because(self.cfg).get("blocks_per_region", "")
        chosen = "auto" if why.startswith("auto") else f"training.blocks_per_region = {self.cfg.training.blocks_per_region}"
        if e.grouping_refused is None:
            return f"blocks per compiled region: {e.blocks_per_region}" + (f" ({why})" if chosen == "auto" else "")
        return f"blocks per compiled region: 1 ({chosen}: {e.grouping_refused})"

    def fp8_lines(self) -> List[str]:
        """What runs in FP8 and what stays bf16 (and why), when FP8 is on."""
        if not self.cfg.training.fp8.enabled:
            return []
        from ..fp8.dispatch import summary
        from ..fp8.recipe import recipe_from_config
        kept = " | forward casts kept for backward" if self.cfg.training.fp8.keep_casts else ""
        return [f"fp8        {recipe_from_config(self.cfg.training.fp8).describe()} | "
                f"{summary(self.engine.fp8_choices)}{kept}"]

    def maybe_drop_guides(self) -> None:
        if self.loop.guides_dropped or not self.cfg.self_guided.enabled:
            return
        if self.loop.step < self.phases.guides_end_at():
            return
        info = self.engine.drop_guides_and_rebuild()
        self.loop.guides_dropped = True
        self.logger.print(f"[step {self.loop.step}] guide weight reached 0: guides dropped, optimizer rebuilt | "
                          + ", ".join(f"{k} {v:,.4g}" if isinstance(v, float) else f"{k} {v:,}"
                                      for k, v in info.items())
                          + (f" | {self.engine.compiled_blocks} blocks compiled"
                             + (f", {self.engine.blocks_per_region} per region" if self.engine.blocks_per_region > 1 else "")
                             if self.engine.compiled_blocks else ""))
        self.logger.scalars({f"mem/{k}": v for k, v in info.items() if "gb" in k}, self.loop.step,
                            self.loop.consumed_tokens)

    def train_step(self) -> Dict:
        step = self.loop.step
        alpha = self.phases.alpha(step) if not self.loop.guides_dropped else 0.0
        self.guide_state.set_step(step, self.phases.guided_steps, self.phases.schedule)
        lr = learning_rate(step, self.cfg.optimizer, self.phases.total_steps)
        self.engine.set_lr(lr)
        batches = self.feed.train_micro_batches(self.phases.data_step(step))
        hook = self._nonfinite_hook() if step in self._inject else None
        try:
            loss = self.engine.train_batch_deferred(batches)
        finally:
            if hook is not None:
                hook.remove()
        skipped, grad_norm = self.engine.step_outcome()
        self.loop.step += 1
        self.loop.consumed_tokens += self.cfg.training.global_batch_size * self.cfg.model.seq_length
        guide_fraction = 0.0
        if self.guide_state.active and alpha > 0:
            guide_fraction = alpha if self.cfg.self_guided.reduce_flop else 1.0
        return {"step": self.loop.step, "tokens": self.loop.consumed_tokens, "loss": loss, "lr": lr,
                "alpha": alpha if self.cfg.self_guided.enabled else None, "skipped": skipped,
                "grad_norm": grad_norm, "guide_fraction": guide_fraction}

    def record_step(self, out: Dict) -> None:
        """One line of run_dir/metrics.jsonl: this step's numbers at full precision (settled)."""
        self.logger.step_record({"step": out["step"], "tokens": out["tokens"], "loss": out["loss"],
                                 "lr": out["lr"], "grad_norm": out["grad_norm"], "guide_alpha": out["alpha"],
                                 "skipped": out["skipped"], "step_time_s": out["step_time_s"],
                                 "max_allocated_gb": out["max_allocated_gb"],
                                 **({"max_reserved_gb": out["max_reserved_gb"]}
                                    if out.get("max_reserved_gb") is not None else {}),
                                 **({"compiled_graphs": out["compiled_graphs"]}
                                    if out.get("compiled_graphs") is not None else {})})

    def settle(self, check_guard: bool = True, timer: Optional[StepTimer] = None) -> Optional[Dict]:
        """Read the pending steps' device values (one wait for all of them) and do their
        bookkeeping in order; raises TrainingStopped at the step where the non-finite limit is
        reached (its line and those before it written), unless check_guard is False.
        With `timer`, the last pending step's time is taken after the wait. Returns the last
        settled step."""
        pending, self._pending = self._pending, []
        if not pending:
            return None
        _read_device_values(pending)
        if timer is not None:
            pending[-1]["step_time_s"] = timer.lap()
            self._window["time"] += pending[-1]["step_time_s"]
        t = self.cfg.training
        for out in pending:
            out["skipped"] = bool(out["skipped"]) or not math.isfinite(out["loss"])
            self.guard.record(out["skipped"])
            self.record_step(out)
            _accumulate(self._window, out)
            if not out["skipped"]:
                self.train_losses[out["step"]] = out["loss"]
            else:
                self.logger.print(f"[step {out['step']}] non-finite loss or gradient: step skipped "
                                  f"({self.guard.in_a_row} in a row, {self.guard.total} in total)")
            if check_guard and self.guard.should_stop:
                raise TrainingStopped(f"{self.guard.in_a_row} non-finite steps in a row (limit "
                                      f"training.max_nonfinite_steps = {t.max_nonfinite_steps}); the run is "
                                      f"diverging. Last good checkpoint: {self.ckpt.latest_tag()}")
        return pending[-1]

    def _nonfinite_hook(self):
        first = next(m for m in self.engine.module.modules() if hasattr(m, "weight"))
        return first.register_forward_hook(lambda mod, inp, out: out * float("nan"))

    def log_step(self, out: Dict, window: Dict) -> None:
        """The console line and TensorBoard scalars of a log interval; `out` is its last (settled) step."""
        cfg = self.cfg
        tokens = cfg.training.global_batch_size * cfg.model.seq_length
        step_time = window["time"] / max(1, window["steps"])
        flops_per_token = train_flops_per_token(self.stats, window["guide_fraction"] / max(1, window["steps"]))
        tflops = flops_per_token * tokens / step_time / self.state.world_size / 1e12
        metrics = {
            "step": self.loop.step, "consumed_tokens": self.loop.consumed_tokens, "lr": out["lr"],
            "loss": window["loss"] / max(1, window["finite"]) if window["finite"] else float("nan"),
            "grad_norm": float(out["grad_norm"] or 0.0), "guide_alpha": out["alpha"],
            "loss_scale": self.engine.loss_scale if cfg.training.precision == "fp16" else None,
            "tokens_per_s": tokens / step_time, "tflops_per_gpu": tflops,
            "mfu": tflops / self.peak_tflops if self.peak_tflops else None,
            "step_time_s": step_time, "skipped_steps": self.guard.total, **memory_gb(),
        }
        self.logger.print(format_train_line(metrics, self.phases.total_steps))
        self.logger.scalars({
            "train/loss": metrics["loss"], "train/lr": metrics["lr"], "train/grad_norm": metrics["grad_norm"],
            "train/guide_alpha": metrics["guide_alpha"], "train/loss_scale": metrics["loss_scale"],
            "train/consumed_tokens": float(metrics["consumed_tokens"]), "train/skipped_steps": float(self.guard.total),
            "perf/tokens_per_s": metrics["tokens_per_s"], "perf/tflops_per_gpu": tflops, "perf/mfu": metrics["mfu"],
            "perf/step_time_s": step_time, "mem/max_allocated_gb": metrics["max_allocated_gb"],
            "mem/allocated_gb": metrics.get("allocated_gb"), "mem/max_reserved_gb": metrics.get("max_reserved_gb"),
        }, self.loop.step, self.loop.consumed_tokens)

    def evaluate(self) -> float:
        losses = []
        for batch_iter in self.feed.valid_global_batches(desc=f"eval @ step {self.loop.step}"):
            losses.append(self.engine.eval_batch(batch_iter))
        loss = float(sum(losses) / len(losses))
        ppl = math.exp(min(loss, 50.0))
        self.logger.print(f"[step {self.loop.step}] validation loss {loss:.4f} | perplexity {ppl:.3f} "
                          f"({len(losses)} batches of {self.cfg.training.global_batch_size})")
        self.logger.scalars({"val/loss": loss, "val/ppl": ppl}, self.loop.step, self.loop.consumed_tokens)
        self.logger.flush()
        return loss

    def save(self, reason: str) -> None:
        if not self.cfg.output.checkpoints:  # --no-save: every save point is a no-op
            return
        meta = {"step": self.loop.step, "loop": dataclasses.asdict(self.loop), "reason": reason,
                "guide": self.guide_state.state_dict(), "config": self.cfg.to_dict(),
                "layout": {"tensor": self.state.tensor_size, "pipeline": self.state.pipe_size,
                           "data": self.state.data_size, "zero_stage": self.cfg.parallel.zero_stage,
                           "optimizer": self.cfg.optimizer.implementation},
                "data": {"paths": self.feed.prefixes, "tokenizer": self.feed.tokenizer_path}}  # as resolved
        client = {"loop": dataclasses.asdict(self.loop), "nonfinite": self.guard.state_dict(),
                  "guide": self.guide_state.state_dict(), "config": self.cfg.to_dict()}
        tag = self.ckpt.save(self.engine, self.loop.step, meta, client)
        self.logger.print(f"[step {self.loop.step}] saved checkpoint {os.path.join(self.ckpt.directory, tag)} ({reason})")

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> RunResult:
        t = self.cfg.training
        self.banner()
        stop = StopRequests(t.exit_duration_minutes, t.exit_interval).install()
        timer = StepTimer()
        self._window = _new_window()
        stopped, final_val = None, None
        try:
            while self.loop.step < self.phases.total_steps:
                self.maybe_drop_guides()
                with self.profiler.step(self.loop.step + 1):
                    out = self.train_step()
                if self.profiler.written:
                    print(f"[step {self.loop.step}] rank {self.state.rank}: profile written: "
                          f"{', '.join(self.profiler.written)}", flush=True)  # the profiling rank says it
                    self.profiler.written = []
                out["max_allocated_gb"] = max_allocated_gb()
                out["max_reserved_gb"] = max_reserved_gb()
                compiles = t.compile or self.cfg.optimizer.update == "compiled"  # blocks, or the optimizer's update
                out["compiled_graphs"] = compiled_graph_count() if compiles else None
                self._pending.append(out)
                step = self.loop.step
                last = step >= self.phases.total_steps
                evaluate = step % t.eval_interval == 0 and not last
                save = step % t.save_interval == 0 and not last
                log = step % t.log_interval == 0
                if log or evaluate or save or last:
                    # the only wait for the device in a step (log, eval, save, end); this step's
                    # time includes it, so a log window's step times sum to its wall time
                    self.settle(timer=timer)
                else:
                    out["step_time_s"] = timer.lap()
                    self._window["time"] += out["step_time_s"]
                if log:
                    self.log_step(out, self._window)
                    self._window = _new_window()
                if evaluate:
                    self.evaluate()
                    timer.lap()
                saved = False
                if save:
                    self.save("interval")
                    saved = True
                    timer.lap()
                reason = stop.agreed_reason(self.device, self.loop.step)
                if reason is not None and not last:
                    self.settle()
                    stopped = reason
                    if not saved:
                        self.save(f"stop: {reason}")
                    self.logger.print(f"[step {self.loop.step}] stopping: {reason}. Resume with the same command.")
                    break
            if stopped is None:
                final_val = self.evaluate()
                if self.ckpt.latest_tag() != f"step{self.loop.step:08d}":
                    self.save("end of training")
                self.logger.print(f"done: {self.loop.step} steps, {self.loop.consumed_tokens:,} tokens, "
                                  f"final validation loss {final_val:.4f}, perplexity {math.exp(min(final_val, 50)):.3f}")
        finally:
            if self._pending:  # leaving on an error: still write the steps that were made
                try:
                    self.settle(check_guard=False)
                except Exception:  # noqa: BLE001 - the error already on its way matters more
                    pass
            self.profiler.close(self.loop.step)
            stop.uninstall()
            self.logger.close()
        return RunResult(self.loop.step, self.loop.consumed_tokens, final_val, stopped, self.train_losses)


def _new_window() -> Dict:
    return {"time": 0.0, "steps": 0, "loss": 0.0, "finite": 0, "guide_fraction": 0.0}


def _read_device_values(pending: List[Dict]) -> None:
    """Replace the device tensors among the pending steps' loss, grad_norm and skipped by
    Python numbers, with one transfer (one wait) for all of them; values are exact (float32
    and float64 both become the float64 Python float they equal)."""
    keys = ("loss", "grad_norm", "skipped")
    where = [(out, key) for out in pending for key in keys if isinstance(out.get(key), torch.Tensor)]
    if where:
        values = torch.stack([out[key].detach().reshape(()).to(torch.float64) for out, key in where]).tolist()
        for (out, key), value in zip(where, values):
            out[key] = value
    for out in pending:
        if out.get("grad_norm") is not None:
            out["grad_norm"] = float(out["grad_norm"])
        out["loss"] = float(out["loss"])


def _accumulate(window: Dict, out: Dict) -> None:
    window["steps"] += 1
    window["guide_fraction"] += out["guide_fraction"]
    if not out["skipped"]:
        window["loss"] += out["loss"]
        window["finite"] += 1


def _device():
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def run(cfg: Config, notes: Optional[List[str]] = None) -> RunResult:
    """Train as configured; the entry point of launchers/pretrain.py (notes: extra banner lines)."""
    return Trainer(cfg, notes).run()
