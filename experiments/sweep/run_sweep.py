#!/usr/bin/env python
"""Issue 16's sweep: dense vs structured FFNs vs self-guided training on real text, with seeds.

    python experiments/sweep/run_sweep.py --carry .sweep_carry --devices 0 1 2 3 --deadline-minutes 9 \\
        --runs-tar .sweep_results/sweep_runs.tar.gz --bundle $OUT/sweep_runs.tar.gz   # one GPU call
    python experiments/sweep/run_sweep.py --report-only --runs-tar .sweep_results/sweep_runs.tar.gz
    python experiments/sweep/run_sweep.py --smoke --parallel 4 --out-dir /tmp/s --runs-dir /tmp/s/runs  # CPU
    python experiments/sweep/run_sweep.py --write-configs          # regenerate experiments/sweep/configs/

The runs (runs.py): every setting at the dense run's token budget (`--dense-tokens`; the
self-guided and `_flops` settings at its FLOPs), dense / LowRank 32% / self-guided LowRank 32%
at two more seeds, and those three at 4x the budget. Each run is its own process on one
slot (`--devices`: one GPU each; `--parallel N`: N CPU processes in smoke mode), longest
first, started only when its estimated time fits before `--deadline-minutes`
(scheduler.py). Runs that an earlier call finished (found in `--runs-dir`, or in the
`--runs-tar` it sent back) are skipped; a run stopped at a deadline starts again from step 0
in the next call. results.md / .json / .png and the `--bundle` tarball are rewritten after
every run, so whatever finished is reported even if the call is killed.

Exit code: 0 every selected run finished; 3 some are left for another call; 1 a run failed.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from experiments.sweep import bundle, launch, plan, records, runs, scheduler, sweep_data, sweep_report  # noqa: E402
from megatron_sffn.data.sample_index import samples_in  # noqa: E402
from megatron_sffn.fp8.recipe import recipe_from_config  # noqa: E402

# Prior for the time estimate before any run of this call has finished: one H100 ran the
# 50M-token runs at 603-622k tokens/s with ~35 s of start-up (docs/results_50m).
GPU_TOKENS_PER_S, STARTUP_S = 600_000, 35.0


def environment(smoke: bool) -> Dict:
    """Device and versions, asked of a child process so this one never touches the GPU."""
    code = ("import json, platform, torch\n"
            "try:\n import deepspeed; ds = deepspeed.__version__\n"
            "except Exception as e:\n ds = f'not importable ({type(e).__name__})'\n"
            "cuda = torch.cuda.is_available()\n"
            "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'deepspeed': ds,"
            " 'python': platform.python_version(), 'gpus': torch.cuda.device_count(),"
            " 'device': torch.cuda.get_device_name() if cuda else f'CPU ({platform.processor() or platform.machine()})'}))")
    try:
        info = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                         env=launch.child_env(smoke), timeout=300).stdout.strip().splitlines()[-1])
    except Exception as error:  # the report must not fail for want of a version string
        info = {"device": f"unknown ({error})"}
    info["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True, timeout=30).stdout.strip() or None
    except Exception:
        info["commit"] = None
    return info


def precision_text(cfg) -> str:
    """bf16, or bf16 with FP8 GEMMs and the recipe's description (an FP8 sweep's runs)."""
    f = cfg.training.fp8
    if not f.enabled:
        return cfg.training.precision
    which = "every GEMM weight" if f.layers == "all" else "the GEMMs where FP8 pays (layers auto)"
    return f"{cfg.training.precision} with FP8 on {which} ({recipe_from_config(f).describe()})"


def setup_text(args, plans: List[plan.RunPlan], data: Optional[Dict]) -> Dict:
    """The setup paragraph, from the effective config (overrides applied) of the first run."""
    first = next((p for p in plans if p.cfg is not None), None)
    command = " ".join(["python experiments/sweep/run_sweep.py", *args.argv])
    # the GPU suite's FP8 set (benchmarks/gpu/suites/sweep.sh fp8) is the one that turns FP8 on
    fp8 = "training.fp8.enabled=true" in (args.override or [])
    suite, bundle = ("sweep \"$OUT\" fp8", "sweep_fp8_runs.tar.gz") if fp8 else ("sweep \"$OUT\"", "sweep_runs.tar.gz")
    out = {"family_name": "smoke test (tiny models, CPU)" if args.smoke else "sweep",
           "dense_steps": first.dense_steps if first else None, "command": command,
           "reproduce": [command] if args.smoke else [
               "# corpus, tokenizer, carry folder and wheels: docs/sweep.md; then, on a 4-GPU host, once per",
               f"# 10-minute call (copying its {bundle} into .sweep_results/ between calls):",
               f"benchmarks/gpu/run.sh {suite}", "# and here:", command],
           "setup": "No run could be configured."}
    if first is None:
        return out
    cfg = first.cfg
    m, t, o = cfg.model, cfg.training, cfg.optimizer
    per_step = t.global_batch_size * m.seq_length
    if not args.smoke:
        out["family_name"] = (f"d{m.hidden_size} x {m.num_layers} layers, ffn {m.ffn_hidden_size}, seq {m.seq_length}, "
                              f"vocab {m.vocab_size / 1000:g}k")
    corpus = ("the bundled corpus (smoke test)" if data is None else
              f"the `large` Debian corpus (docs/data.md section 7), {data['train_tokens'] / 1e6:.1f}M train / "
              f"{data['valid_tokens'] / 1e6:.2f}M held-out tokens ({data['train_documents']:,} / "
              f"{data['valid_documents']:,} documents, `--split 99,1`), its own {m.vocab_size:,}-piece tokenizer")
    x1 = first.dense_steps * per_step
    coverage = "" if data is None else f" of the {samples_in(1, data['valid_tokens'], m.seq_length)} it holds"
    out["setup"] = (
        f"Model family: width {m.hidden_size}, {m.num_layers} layers, {m.num_heads} heads, ffn "
        f"{m.ffn_hidden_size}, seq {m.seq_length}, vocab {m.vocab_size:,}; {m.norm}, {m.activation}, "
        f"{'biases, ' if m.bias else ''}RoPE, {'tied embeddings' if m.tie_embeddings else 'untied embeddings'}; "
        f"first layer's FFN dense. Data: {corpus}. Every run: global batch {t.global_batch_size} x {m.seq_length} "
        f"= {per_step:,} tokens (micro-batch {t.micro_batch_size}), AdamW ({o.beta1}, {o.beta2}, weight decay "
        f"{o.weight_decay}), lr {o.lr:g} with {100 * o.warmup_fraction:.0f}% warmup and cosine decay to "
        f"{o.min_lr_ratio} x lr over the run's own steps, grad clip {o.grad_clip}, {precision_text(cfg)}, "
        f"ZeRO-{cfg.parallel.zero_stage}, one {'process' if args.smoke else 'GPU'} per run. "
        f"Seeds {', '.join(map(str, runs.SEEDS))} for "
        f"{', '.join(runs.SEEDED)}; seed {runs.SEEDS[0]} for the rest (a seed sets the initial weights, the "
        f"data order and the guide's draws; runs of one seed share them wherever shapes agree). Budget x1: "
        f"{first.dense_steps} steps ({x1 / 1e6:.2f}M tokens) for the equal-token settings; x{runs.LONG_SCALE}: "
        f"{runs.LONG_SCALE * first.dense_steps} steps for {', '.join(runs.LONG)}. `*_sgt`: self-guided "
        f"({cfg.self_guided.schedule} decay of the guide weight, reduce_flop) in same-FLOPs mode: the guided "
        "phase's batches are repeated at the end without the guide, the phase sized so that the total equals "
        "the dense run's FLOPs at the same budget. `lowrank_32_flops`: no guide, as many more steps as the dense "
        f"run's FLOPs pay for. Validation: {t.eval_iters} global batches ({t.eval_iters * t.global_batch_size} "
        f"sequences{coverage}) of the held-out split every {t.eval_interval} steps and at the end.")
    return out


def report(args, plans: List[plan.RunPlan], rows: Dict[str, Dict], skipped: Dict[str, str], env: Dict,
           data: Optional[Dict]) -> Dict:
    """Rewrite results.* from the cached rows (a run folder is read once, after it ended)."""
    table = []
    for p in plans:
        record = launch.read_record(p.run_dir) if p.name not in rows and p.error is None else None
        if record and record.get("status") != "running":
            rows[p.name] = records.summarize(p.run_dir)
            if record.get("status") == "ok" and plan.finished(p) is None:
                rows[p.name].update(status="other plan", reason="ran with other settings than this command "
                                    "plans (--dense-tokens, --override, --smoke?)")
        row = rows.get(p.name) or {"name": p.name, "setting": p.run.setting.name, "seed": p.run.seed,
                                   "scale": p.run.scale, "status": "failed" if p.error else "not run",
                                   "reason": p.error or skipped.get(p.name)}
        table.append(row)
    return sweep_report.write_report(table, env, setup_text(args, plans, data), args.out_dir)


def slots_of(args) -> List[Optional[str]]:
    if args.devices:
        return list(args.devices)
    return [f"cpu{i}" for i in range(args.parallel)] if args.parallel > 1 else [None]


def load_data(args) -> Optional[Dict]:
    """The unpacked corpus' manifest (None in smoke mode); kept beside the runs as data.json so
    that a report made where the corpus is not (--report-only) still describes it."""
    if args.smoke:
        return None
    saved = os.path.join(args.runs_dir, bundle.DATA_FILE)
    if args.carry:
        start = time.perf_counter()
        print(f"unpacking {args.carry} into {args.data_dir} ...", flush=True)
        data = sweep_data.unpack(args.carry, args.data_dir)
        print(f"data ready in {time.perf_counter() - start:.0f} s: {data['train_tokens']:,} train / "
              f"{data['valid_tokens']:,} valid tokens", flush=True)
    else:
        data = sweep_data.read_manifest(args.data_dir)
    if data is None and os.path.isfile(saved) and (args.report_only or args.dry_run):
        with open(saved) as f:
            return json.load(f)
    if data is None and not (args.report_only or args.dry_run):
        raise SystemExit(f"error: no unpacked corpus in {args.data_dir}; pass --carry .sweep_carry")
    if data is not None and not (args.report_only or args.dry_run):
        os.makedirs(args.runs_dir, exist_ok=True)
        with open(saved, "w") as f:
            json.dump(data, f, indent=2)
    return data


def dry_run(args, plans: List[plan.RunPlan]) -> int:
    """Print which runs each call would take if every run ran at --tokens-per-s (no process started)."""
    todo = [p for p in plans if p.error is None and plan.finished(p) is None]
    estimate = scheduler.Estimator(args.tokens_per_s, args.startup_s)
    call_s = 60 * (args.deadline_minutes or 1e6) - args.setup_s
    slots = len(slots_of(args))
    calls = scheduler.simulate(todo, slots, call_s, estimate, args.min_start_s)
    print(f"{len(todo)} runs, {slots} slot(s), {call_s:.0f} s of runs per call, {estimate.tokens_per_s:,.0f} "
          f"tokens/s + {args.startup_s:.0f} s start-up per run: {len(calls)} call(s)")
    for i, placed in enumerate(calls, 1):
        busy = sum(end - begin for _, _, begin, end in placed)
        print(f"call {i}: {len(placed)} runs, {busy:.0f} GPU-s, last ends at {max(e for *_, e in placed):.0f} s")
        for slot, name, begin, end in sorted(placed, key=lambda x: (x[0], x[2])):
            print(f"  slot {slot}: {name:<28} {begin:5.0f} - {end:5.0f} s")
    return 0


def parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dense-tokens", type=int, default=runs.DEFAULT_DENSE_TOKENS,
                   help="budget x1: tokens of every equal-token run (rounded to whole steps)")
    p.add_argument("--only", nargs="+", choices=list(runs.BY_NAME), help="these runs only")
    p.add_argument("--carry", default=None, help="folder from sweep_data.py pack: unpack it first")
    p.add_argument("--data-dir", default=os.path.join(ROOT, runs.DATA_DIR), help="where the corpus is (or goes)")
    p.add_argument("--devices", nargs="+", metavar="GPU",
                   help="one run at a time on each (CUDA_VISIBLE_DEVICES); a GPU named twice runs two at once, "
                        "each slower than the plan's estimate, which assumes a GPU to itself")
    p.add_argument("--parallel", type=int, default=1, help="runs side by side without --devices (CPU smoke)")
    p.add_argument("--deadline-minutes", type=float, default=None,
                   help="for this call, unpacking included: start a run only if it fits, stop runs at the deadline")
    p.add_argument("--tokens-per-s", type=float, default=None,
                   help=f"time estimate before a run has finished (default {GPU_TOKENS_PER_S:,} on GPU, none in smoke)")
    p.add_argument("--startup-s", type=float, default=STARTUP_S, help="per-run start-up in the time estimate")
    p.add_argument("--min-start-s", type=float, default=20.0,
                   help="with no estimate yet, start a run only if this much time is left")
    p.add_argument("--runs-tar", default=None,
                   help="a --bundle tarball of an earlier call: unpack into --runs-dir first")
    p.add_argument("--bundle", default=None, help="write the finished runs' logs here (tar.gz, no checkpoints)")
    p.add_argument("--evals", type=int, default=8, help="evaluations over an x1 run's length")
    p.add_argument("--launcher", choices=["python", "deepspeed"], default="python")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run, e.g. training.micro_batch_size=16 (repeatable)")
    p.add_argument("--configs-dir", default=runs.CONFIG_DIR)
    p.add_argument("--runs-dir", default=os.path.join("runs", "sweep"))
    p.add_argument("--out-dir", default=os.path.join(ROOT, "docs"), help="results.md / .json / .png go here")
    p.add_argument("--keep-checkpoints", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny models on the bundled corpus, on CPU")
    p.add_argument("--report-only", action="store_true", help="re-read the runs and rewrite the report")
    p.add_argument("--dry-run", action="store_true",
                   help="print the calls the remaining runs need at the estimated rate (--deadline-minutes each)")
    p.add_argument("--setup-s", type=float, default=20.0,
                   help="--dry-run: seconds of each call before the first run starts (unpacking the corpus)")
    p.add_argument("--write-configs", action="store_true", help="regenerate experiments/sweep/configs/ and exit")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.tokens_per_s is None and not args.smoke:
        args.tokens_per_s = GPU_TOKENS_PER_S
    return args


class Call:
    """One invocation that runs what is left: it starts runs as slots free up and rewrites the
    report and the tarball after each run, so a call killed from outside still leaves them."""

    def __init__(self, args, plans: List[plan.RunPlan], data: Optional[Dict], probe):
        self.args, self.plans, self.data, self.probe = args, plans, data, probe
        self.rows: Dict[str, Dict] = {}
        self.env: Dict = {}
        self.threads = max(1, (os.cpu_count() or 1) // len(slots_of(args)))
        self.estimate = scheduler.Estimator(args.tokens_per_s, args.startup_s)

    def environment(self) -> Dict:
        """The probe's answer, also kept beside the runs (it travels in the tarball)."""
        if not self.env:
            self.env.update(self.probe.result())
            os.makedirs(self.args.runs_dir, exist_ok=True)
            with open(os.path.join(self.args.runs_dir, bundle.ENVIRONMENT_FILE), "w") as f:
                json.dump(self.env, f, indent=2)
        return self.env

    def start_run(self, p: plan.RunPlan, slot: Optional[str]) -> launch.RunProcess:
        guess = self.estimate(p.tokens)
        print(f"[sweep] {p.name} on {slot or 'the default device'}: {p.steps} steps, {p.tokens / 1e6:.1f}M tokens"
              + (f", ~{guess:.0f} s" if guess else ""), flush=True)
        cli = ["--config", p.config, "--run-dir", p.run_dir] + [a for o in p.overrides for a in ("--override", o)]
        record = {"name": p.name, "setting": p.run.setting.name, "seed": p.run.seed, "scale": p.run.scale,
                  "config": launch.relative(p.config), "overrides": p.overrides, "planned_steps": p.steps,
                  "tokens": p.tokens, "slot": slot}
        device = slot if self.args.devices and not self.args.smoke else None     # --parallel: labels only
        return launch.RunProcess(record, p.run_dir, launch.launch_command(self.args.launcher, cli),
                                 launch.child_env(self.args.smoke, device, self.threads), self.args.keep_checkpoints)

    def finished_run(self, p: plan.RunPlan, record: Dict) -> None:
        self.rows.pop(p.name, None)
        self.write({})
        row = self.rows.get(p.name, {})
        print(f"[sweep] {p.name}: {record['status']} in {record['wall_s']:.0f} s"
              + (f", val loss {row['val_loss']:.4f}" if row.get("val_loss") is not None else "")
              + (f" ({record['reason']})" if record.get("reason") else "")
              + (f"\n{record['log_tail']}" if record.get("log_tail") else ""), flush=True)

    def write(self, skipped: Dict[str, str]) -> Dict:
        result = report(self.args, self.plans, self.rows, skipped, self.environment(), self.data)
        if self.args.bundle:
            bundle.pack(self.args.runs_dir, self.args.bundle)
        return result

    def run(self, deadline: Optional[float]) -> Dict:
        done = {p.name: rec for p in self.plans if (rec := plan.finished(p)) is not None}
        for p in self.plans:
            if p.error:
                print(f"[sweep] {p.name}: cannot start: {p.error}", flush=True)
        todo = [p for p in self.plans if p.error is None and p.name not in done]
        print(f"[sweep] {len(done)} runs finished earlier (skipped), {len(todo)} to run on "
              f"{len(slots_of(self.args))} slot(s)", flush=True)
        self.estimate.add(done.values())
        skipped = scheduler.run_pool(todo, slots_of(self.args), self.start_run, self.finished_run, self.estimate,
                                     deadline, min_start_s=self.args.min_start_s)
        for name, why in skipped.items():
            print(f"[sweep] {name}: {why}", flush=True)
        return self.write(skipped)


def main(argv=None) -> int:
    args = parse(argv)
    if args.write_configs:
        for path in runs.write_configs(args.configs_dir):
            print(f"wrote {path}")
        return 0
    if not args.dry_run:
        sweep_report.require_matplotlib()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))   # runs are stopped on the way out
    start = time.perf_counter()
    deadline = start + 60 * args.deadline_minutes if args.deadline_minutes else None
    if args.runs_tar and os.path.isfile(args.runs_tar):
        restored = bundle.unpack(args.runs_tar, args.runs_dir)
        print(f"[sweep] {len(restored)} run folders from {args.runs_tar}", flush=True)
    env_file = os.path.join(args.runs_dir, bundle.ENVIRONMENT_FILE)
    probe = None if args.dry_run or (args.report_only and os.path.isfile(env_file)) else \
        concurrent.futures.ThreadPoolExecutor(1).submit(environment, args.smoke)    # meanwhile: data, runs
    data = load_data(args)
    selected = [r for r in runs.SWEEP if not args.only or r.name in args.only]
    plans = [plan.prepare(r, args.configs_dir, args.runs_dir, args.dense_tokens, args.evals, args.smoke,
                          args.override, data, args.keep_checkpoints) for r in selected]
    if args.dry_run:
        return dry_run(args, plans)
    if args.report_only:
        report(args, plans, {}, {}, probe.result() if probe else json.load(open(env_file)), data)
        print(f"wrote {os.path.join(args.out_dir, 'results.md')}")
        return 0
    result = Call(args, plans, data, probe).run(deadline)
    print(f"[sweep] done in {time.perf_counter() - start:.0f} s; wrote {os.path.join(args.out_dir, 'results.md')}")
    for e in result["expectations"]:
        print(f"  - {e['claim']}: {e['verdict']}")
    statuses = [r.get("status") for r in result["runs"]]
    if any(s in ("failed", "incomplete") for s in statuses):
        return 1
    return 0 if all(s == "ok" for s in statuses) else 3


if __name__ == "__main__":
    sys.exit(main())
