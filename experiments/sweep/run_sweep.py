#!/usr/bin/env python
"""Issue 8's sweep on one GPU: dense vs structured FFNs vs self-guided training, on real text.

    python experiments/sweep/run_sweep.py --carry .sweep_carry --deadline-minutes 8     # GPU: unpack, run, write docs/
    python experiments/sweep/run_sweep.py --smoke --out-dir /tmp/s --runs-dir /tmp/s/runs   # CPU, tiny, bundled corpus
    python experiments/sweep/run_sweep.py --report-only                                  # re-read runs/sweep -> docs/
    python experiments/sweep/run_sweep.py --write-configs                                # regenerate experiments/sweep/configs/

Nine runs of one model family (experiments/sweep/configs/, width 512, 8 layers, ffn 2048, seq 1024, the
paper's LayerNorm + GELU + biases + RoPE + tied embeddings, bf16), all with the same seed
(same initial dense weights, same data order) and the paper's LR schedule: dense;
LowRank, BlockDense, BlockShuffle at ~63% and ~32% of the FFN parameters (PAPER.md
Table 1's settings scaled to width d: R = d/2, d/4; B = 4 with R = 3d/4, 3d/8; B = 2, 4);
LowRank 32% with self-guided training in same-FLOPs mode; LowRank 32% without guidance on
as many more tokens as the dense run's training FLOPs buy. Every run but the last two
trains on `--dense-tokens`; those two spend the dense run's FLOPs (model/accounting.py).

Each run is `python launchers/pretrain.py --config ... --run-dir runs/sweep/<name>` in its
own process (`--launcher deepspeed` for `deepspeed --num_gpus 1`); a run that fails is
recorded with its log's last lines and the sweep goes on. With `--deadline-minutes`, a run
that would not finish in time (estimated from the dense run) is skipped, and one still
running at the deadline gets SIGTERM (it stops between steps). results.md / .json / .png are
rewritten after every run, so whatever finished is reported even if the command is killed.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from megatron_sffn.config import ConfigError, load_config  # noqa: E402
from megatron_sffn.model.accounting import dense_equivalent, model_stats, plan_self_guided  # noqa: E402
from experiments.sweep import sweep_data, sweep_report  # noqa: E402

CONFIG_DIR = os.path.join(ROOT, "experiments", "sweep", "configs")

# The model family. Vocabulary 16000 (a tokenizer trained on the corpus): with 32000 the
# tied embedding / LM head would be 40% of the matmul parameters at width 512 and dilute the
# FFN share; at 16000 the dense FFN is half the model, as at the paper's 110M size (52%).
FAMILY = dict(hidden_size=512, num_layers=8, num_heads=8, ffn_hidden_size=2048, seq_length=1024,
              vocab_size=16000)
LR = 1e-3
GLOBAL_BATCH, MICRO_BATCH = 64, 32          # 64 x 1024 = 65,536 tokens per step
EVAL_ITERS = 7                              # 7 x 64 sequences: the whole held-out split, once
SEED = 1234
DEFAULT_DENSE_TOKENS = 12_582_912           # 192 steps of 65,536 tokens
DATA_DIR = os.path.join(".cache", "sweep", "data")   # relative to the repository root, as in the configs
# Document counts of the held-out split of the packed corpus (experiments/sweep/sweep_data.py); the
# unpacked data's own manifest wins when it differs.
DATA_SPLIT = "303387,2955,0"

# --smoke: the same configs shrunk to run on two CPU cores in seconds
SMOKE_FAMILY = dict(hidden_size=128, num_layers=3, num_heads=2, ffn_hidden_size=512, seq_length=64,
                    vocab_size=8192)
SMOKE_BATCH = (8, 8)
SMOKE_DENSE_STEPS = 12


@dataclass(frozen=True)
class SweepRun:
    name: str
    kind: str
    share: Optional[int] = None          # 63 or 32: percent of a dense FFN layer's parameters
    guided: bool = False                 # self-guided training, same-FLOPs mode
    budget: str = "tokens"               # "tokens": --dense-tokens; "dense_flops": the dense run's FLOPs

    @property
    def config_name(self) -> str:
        return f"sweep_{self.name}"


# Run order = priority under a deadline: the reference, the 32% set, the paper's two
# same-FLOPs comparisons, then the 63% set.
SWEEP = [
    SweepRun("dense", "dense"),
    SweepRun("lowrank_32", "lowrank", 32),
    SweepRun("blockdense_32", "blockdense", 32),
    SweepRun("blockshuffle_32", "blockshuffle", 32),
    SweepRun("lowrank_32_sgt", "lowrank", 32, guided=True, budget="dense_flops"),
    SweepRun("lowrank_32_flops", "lowrank", 32, budget="dense_flops"),
    SweepRun("lowrank_63", "lowrank", 63),
    SweepRun("blockdense_63", "blockdense", 63),
    SweepRun("blockshuffle_63", "blockshuffle", 63),
]
BY_NAME = {r.name: r for r in SWEEP}


def ffn_setting(kind: str, share: Optional[int], d: int) -> Dict:
    """PAPER.md Table 1's structures at width d: 63% and 32% of a dense FFN layer."""
    if kind == "dense":
        return {"kind": "dense"}
    big = share == 63
    spec = {"lowrank": {"rank": d // 2 if big else d // 4},
            "blockdense": {"rank": 3 * d // 4 if big else 3 * d // 8, "blocks": 4},
            "blockshuffle": {"blocks": 2 if big else 4}}[kind]
    return {"kind": kind, "first_layer_dense": True, "init": "paper", **spec}


# ---------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------
def tokens_per_step(family: Dict = FAMILY, batch: int = GLOBAL_BATCH) -> int:
    return batch * family["seq_length"]


def steps_for(run: SweepRun, cfg, dense_steps: int) -> int:
    """Optimizer steps before any same-FLOPs repeat phase (the launcher's --train-steps)."""
    if run.budget == "dense_flops" and not run.guided:
        dense = model_stats(dense_equivalent(cfg.model)).train_flops_per_token
        return max(1, round(dense_steps * dense / model_stats(cfg.model).train_flops_per_token))
    return dense_steps   # self-guided same-FLOPs: its plan adds the repeat steps to these


def sweep_config(run: SweepRun, dense_tokens: int = DEFAULT_DENSE_TOKENS) -> Dict:
    name = run.config_name
    model = {"vocab_size": FAMILY["vocab_size"], "seq_length": FAMILY["seq_length"], "norm": "layernorm",
             "activation": "gelu", "bias": True, "tie_embeddings": True, "rope_base": 10000.0, "init_std": 0.02,
             **{k: FAMILY[k] for k in ("hidden_size", "num_layers", "num_heads", "ffn_hidden_size")},
             "ffn": ffn_setting(run.kind, run.share, FAMILY["hidden_size"])}
    cfg = {
        "name": name, "model": model,
        "self_guided": {"enabled": run.guided, "schedule": "cosine", "reduce_flop": True,
                        "same_flops": run.guided, "flops_budget": "dense"},
        "data": {"paths": [sweep_data.dataset_prefix(DATA_DIR)], "split": DATA_SPLIT,
                 "tokenizer_model": sweep_data.tokenizer_path(DATA_DIR)},
        "optimizer": {"lr": LR, "min_lr_ratio": 0.1, "warmup_fraction": 0.1, "weight_decay": 0.1,
                      "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "grad_clip": 1.0},
        "training": {"train_tokens": dense_tokens, "micro_batch_size": MICRO_BATCH,
                     "global_batch_size": GLOBAL_BATCH, "seed": SEED, "precision": "bf16", "log_interval": 5,
                     "eval_interval": 24, "eval_iters": EVAL_ITERS, "save_interval": 100000, "keep_last": 1},
        "parallel": {"tensor": 1, "pipeline": 1, "zero_stage": 1},
        "output": {"run_dir": f"runs/sweep/{run.name}"},
    }
    if run.budget == "dense_flops" and not run.guided:
        from megatron_sffn.config import config_from_dict
        dense_steps = round(dense_tokens / tokens_per_step())
        cfg["training"]["train_tokens"] = steps_for(run, config_from_dict(cfg), dense_steps) * tokens_per_step()
    return cfg


def write_configs(out_dir: str = CONFIG_DIR) -> List[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for run in SWEEP:
        path = os.path.join(out_dir, f"{run.config_name}.json")
        with open(path, "w") as f:
            json.dump(sweep_config(run), f, indent=2)
            f.write("\n")
        paths.append(path)
    return paths


def smoke_overrides(cfg) -> List[str]:
    """Shrink a sweep config to SMOKE_FAMILY (ranks scaled with the width) on the bundled corpus."""
    scale = SMOKE_FAMILY["hidden_size"] / cfg.model.hidden_size
    out = [f"model.{k}={v}" for k, v in SMOKE_FAMILY.items()]
    if cfg.model.ffn.rank is not None:
        out.append(f"model.ffn.rank={int(cfg.model.ffn.rank * scale)}")
    out += ['data.paths=["embedded"]', "data.tokenizer_model=embedded", "data.split=969,30,1",
            "training.precision=fp32", f"training.global_batch_size={SMOKE_BATCH[0]}",
            f"training.micro_batch_size={SMOKE_BATCH[1]}", "training.eval_iters=2", "training.log_interval=1"]
    return out


# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------
def environment(smoke: bool) -> Dict:
    """Device and versions, asked of a child process so this one never touches the GPU."""
    code = ("import json, platform, torch\n"
            "try:\n import deepspeed; ds = deepspeed.__version__\n"
            "except Exception as e:\n ds = f'not importable ({type(e).__name__})'\n"
            "cuda = torch.cuda.is_available()\n"
            "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'deepspeed': ds,"
            " 'python': platform.python_version(),"
            " 'device': torch.cuda.get_device_name() if cuda else f'CPU ({platform.processor() or platform.machine()})'}))")
    env = _child_env(smoke)
    try:
        info = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                         env=env, timeout=300).stdout.strip().splitlines()[-1])
    except Exception as error:  # the report must not fail for want of a version string
        info = {"device": f"unknown ({error})"}
    info["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True, timeout=30).stdout.strip() or None
    except Exception:
        info["commit"] = None
    return info


def _child_env(smoke: bool) -> Dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)       # each run is its own single-process job
    if smoke:
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    return env


def launch_command(launcher: str, args: List[str]) -> List[str]:
    script = os.path.join(ROOT, "launchers", "pretrain.py")
    if launcher == "deepspeed":
        from megatron_sffn.parallel.launch import free_port
        runner = shutil.which("deepspeed") or "deepspeed"
        return [runner, "--num_gpus", "1", "--master_port", str(free_port()), script, *args]
    return [sys.executable, "-u", script, *args]


def _stop(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM (the loop stops between steps), then SIGKILL the whole process group."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _log_tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            text = f.read()[-20000:]
    except OSError:
        return ""
    keep = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return "\n".join(keep[-lines:])


def run_one(run: SweepRun, config_path: str, overrides: List[str], run_dir: str, planned_steps: int,
            launcher: str, limit_s: Optional[float], smoke: bool, keep_checkpoints: bool,
            command: Optional[List[str]] = None) -> Dict:
    """Launch one training run and record how it ended (never raises for the run's failures)."""
    if os.path.isdir(run_dir):
        shutil.rmtree(run_dir)        # a stale checkpoint would be resumed, stale events mixed in
    os.makedirs(run_dir)
    args = ["--config", config_path, "--run-dir", run_dir] + [a for o in overrides for a in ("--override", o)]
    command = command or launch_command(launcher, args)
    record = {"name": run.name, "config": _relative(config_path), "overrides": overrides, "planned_steps": planned_steps,
              "command": command, "status": "running", "started": time.time()}
    log_path = os.path.join(run_dir, "train.log")
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=_child_env(smoke),
                                start_new_session=True)
        try:
            proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            record["reason"] = f"stopped at the sweep deadline after {time.perf_counter() - start:.0f} s"
            _stop(proc, grace_s=30)
        except BaseException:
            _stop(proc, grace_s=10)
            raise
    record.update(returncode=proc.returncode, wall_s=round(time.perf_counter() - start, 1))
    if "reason" in record:
        record["status"] = "stopped"
    elif proc.returncode == 0:
        record["status"] = "ok"
    else:
        record["status"] = "failed"
        record["reason"] = f"exit code {proc.returncode}"
        record["log_tail"] = _log_tail(log_path)
    if not keep_checkpoints:
        shutil.rmtree(os.path.join(run_dir, "checkpoints"), ignore_errors=True)
    _save_record(run_dir, record)
    return record


def _relative(path: str) -> str:
    """Paths inside the repository are recorded relative to it, so run folders can be moved."""
    path = os.path.abspath(path)
    return os.path.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else path


def _save_record(run_dir: str, record: Dict) -> None:
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, sweep_report.RECORD_FILE), "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")


def prepare_runs(names: List[str], args, data: Optional[Dict]) -> List[Dict]:
    """Config path, overrides and planned steps of each selected run (errors recorded, not raised)."""
    plans = []
    for run in (BY_NAME[n] for n in names):
        path = os.path.join(args.configs_dir, f"{run.config_name}.json")
        plan = {"run": run, "config": path, "run_dir": os.path.join(args.runs_dir, run.name)}
        try:
            base = load_config(path)
            overrides = (smoke_overrides(base) if args.smoke else []) + list(args.override)
            if data is not None:
                overrides += [f"data.paths={json.dumps([os.path.abspath(data['prefix'])])}",
                              f"data.tokenizer_model={os.path.abspath(data['tokenizer'])}",
                              f"data.split={data['data_split']}"]
            cfg = load_config(path, overrides + ["training.train_steps=1", "training.train_tokens=null"])
            per_step = cfg.training.global_batch_size * cfg.model.seq_length
            dense_steps = SMOKE_DENSE_STEPS if args.smoke else max(1, round(args.dense_tokens / per_step))
            steps = steps_for(run, cfg, dense_steps)
            cfg = load_config(path, overrides + [f"training.train_steps={steps}", "training.train_tokens=null"])
            total = plan_self_guided(cfg, steps).total_steps
            overrides += ["training.train_tokens=null", f"training.train_steps={steps}",
                          f"training.eval_interval={max(1, dense_steps // args.evals)}",
                          f"training.save_interval={10 * total + 1000}"]
            if not args.keep_checkpoints:
                overrides.append("output.checkpoints=false")   # nothing to resume: save no time writing them
            plan.update(overrides=overrides, steps=total, tokens=total * per_step, dense_steps=dense_steps,
                        cfg=load_config(path, overrides))
        except (ConfigError, ValueError, OSError) as error:
            plan["error"] = f"{type(error).__name__}: {error}"
        plans.append(plan)
    return plans


def settings(args, plans: List[Dict], data: Optional[Dict]) -> Dict:
    """The setup paragraph, from the effective config (overrides applied) of the first run."""
    cfg = next((p["cfg"] for p in plans if "cfg" in p), None)
    dense_steps = next((p["dense_steps"] for p in plans if "dense_steps" in p), None)
    command = " ".join(["python experiments/sweep/run_sweep.py", *args.argv])
    out = {"family_name": "smoke test (tiny models, CPU)" if args.smoke else "sweep", "dense_steps": dense_steps,
           "command": command, "reproduce": ["# corpus, tokenizer and carry folder: docs/sweep.md", command],
           "setup": "No run could be configured."}
    if cfg is None:
        return out
    m, t, o = cfg.model, cfg.training, cfg.optimizer
    per_step = t.global_batch_size * m.seq_length
    if not args.smoke:
        out["family_name"] = (f"d{m.hidden_size} x {m.num_layers} layers, ffn {m.ffn_hidden_size}, seq {m.seq_length}, "
                              f"vocab {m.vocab_size / 1000:g}k")
    corpus = ("the bundled corpus (smoke test)" if data is None else
              f"the `large` Debian corpus (docs/data.md section 7), {data['train_tokens'] / 1e6:.1f}M train / "
              f"{data['valid_tokens'] / 1e6:.2f}M held-out tokens ({data['train_documents']:,} / "
              f"{data['valid_documents']:,} documents, `--split 99,1`), its own {m.vocab_size:,}-piece tokenizer")
    out["setup"] = (
        f"Model family: width {m.hidden_size}, {m.num_layers} layers, {m.num_heads} heads, ffn "
        f"{m.ffn_hidden_size}, seq {m.seq_length}, vocab {m.vocab_size:,}; {m.norm}, {m.activation}, "
        f"{'biases, ' if m.bias else ''}RoPE, {'tied embeddings' if m.tie_embeddings else 'untied embeddings'}; "
        f"first layer's FFN dense. Data: {corpus}. Every run: seed {t.seed} (same data order, same dense initial "
        f"weights), global batch {t.global_batch_size} x {m.seq_length} = {per_step:,} tokens (micro-batch "
        f"{t.micro_batch_size}), AdamW ({o.beta1}, {o.beta2}, weight decay {o.weight_decay}), lr {o.lr:g} with "
        f"{100 * o.warmup_fraction:.0f}% warmup and cosine decay to {o.min_lr_ratio} x lr over each run's own "
        f"steps, grad clip {o.grad_clip}, {t.precision}, ZeRO-{cfg.parallel.zero_stage}, one GPU. Equal-token runs: "
        f"{dense_steps} steps ({(dense_steps or 0) * per_step / 1e6:.2f}M tokens). `lowrank_32_sgt`: self-guided "
        f"({cfg.self_guided.schedule} decay of the guide weight, reduce_flop) in same-FLOPs mode: the guided "
        "phase's batches are repeated at the end without the guide, the phase sized so that the total equals the "
        "dense run's FLOPs. `lowrank_32_flops`: no guide, as many more steps as the dense run's FLOPs pay for. "
        f"Validation: {t.eval_iters} global batches of the held-out split every {t.eval_interval} steps and at "
        "the end.")
    return out


def report(args, plans: List[Dict], env: Dict, data: Optional[Dict]) -> Dict:
    rows = []
    for plan in plans:
        row = sweep_report.summarize(plan["run_dir"]) if "error" not in plan else None
        if row is None:
            row = {"name": plan["run"].name, "status": "failed" if "error" in plan else "not run",
                   "reason": plan.get("error") or plan.get("skipped")}
        rows.append(row)
    return sweep_report.write_report(rows, env, settings(args, plans, data), args.out_dir)


def estimate_s(plan: Dict, done: List[Dict]) -> Optional[float]:
    """Time for `plan` from the dense run's wall time, scaled by tokens (None before it ran)."""
    dense = next((r for r in done if r["name"] == "dense" and r["status"] == "ok"), None)
    dense_plan_tokens = dense and dense.get("tokens")
    if not dense_plan_tokens:
        return None
    return dense["wall_s"] * plan["tokens"] / dense_plan_tokens


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dense-tokens", type=int, default=DEFAULT_DENSE_TOKENS,
                   help="tokens of every equal-token run (rounded to whole steps); the same-FLOPs runs follow")
    p.add_argument("--only", nargs="+", choices=list(BY_NAME), help="these runs only (in sweep order)")
    p.add_argument("--carry", default=None, help="folder from experiments/sweep/sweep_data.py pack: unpack it first")
    p.add_argument("--data-dir", default=os.path.join(ROOT, DATA_DIR), help="where the carried corpus is (or was) unpacked")
    p.add_argument("--deadline-minutes", type=float, default=None,
                   help="whole sweep (unpacking included): skip runs that would not fit, stop one at the deadline")
    p.add_argument("--evals", type=int, default=8, help="evaluations over the equal-token runs' length")
    p.add_argument("--launcher", choices=["python", "deepspeed"], default="python")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run, e.g. training.micro_batch_size=16 (repeatable)")
    p.add_argument("--configs-dir", default=CONFIG_DIR)
    p.add_argument("--runs-dir", default=os.path.join("runs", "sweep"))
    p.add_argument("--out-dir", default=os.path.join(ROOT, "docs"), help="results.md / .json / .png go here")
    p.add_argument("--keep-checkpoints", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny models on the bundled corpus, on CPU")
    p.add_argument("--report-only", action="store_true", help="re-read the runs and rewrite the report")
    p.add_argument("--write-configs", action="store_true", help="regenerate experiments/sweep/configs/ and exit")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.write_configs:
        for path in write_configs(args.configs_dir):
            print(f"wrote {path}")
        return 0
    sweep_report.require_matplotlib()
    start = time.perf_counter()
    deadline = start + 60 * args.deadline_minutes if args.deadline_minutes else None
    data = None
    if not args.smoke:
        if args.carry:
            print(f"unpacking {args.carry} into {args.data_dir} ...", flush=True)
            data = sweep_data.unpack(args.carry, args.data_dir)
            print(f"data ready in {time.perf_counter() - start:.0f} s: {data['train_tokens']:,} train / "
                  f"{data['valid_tokens']:,} valid tokens", flush=True)
        else:
            data = sweep_data.read_manifest(args.data_dir)
            if data is None and not args.report_only:
                print(f"error: no unpacked corpus in {args.data_dir}; pass --carry .sweep_carry", file=sys.stderr)
                return 2
    names = [r.name for r in SWEEP if not args.only or r.name in args.only]
    plans = prepare_runs(names, args, data)
    env_file = os.path.join(args.runs_dir, "environment.json")
    if args.report_only:
        env = json.load(open(env_file)) if os.path.isfile(env_file) else environment(args.smoke)
        report(args, plans, env, data)
        print(f"wrote {os.path.join(args.out_dir, 'results.md')}")
        return 0
    env = environment(args.smoke)
    os.makedirs(args.runs_dir, exist_ok=True)
    with open(env_file, "w") as f:
        json.dump(env, f, indent=2)
    done: List[Dict] = []
    for plan in plans:
        name = plan["run"].name
        if "error" in plan:
            print(f"[sweep] {name}: cannot start: {plan['error']}", flush=True)
            continue
        limit = None
        if deadline is not None:
            limit = deadline - time.perf_counter()
            guess = estimate_s(plan, done)
            if limit < 20 or (guess is not None and guess > limit):
                plan["skipped"] = (f"skipped: {limit:.0f} s left before the deadline"
                                   + (f", needs ~{guess:.0f} s" if guess is not None else ""))
                print(f"[sweep] {name}: {plan['skipped']}", flush=True)
                continue
        print(f"[sweep] {name}: {plan['steps']} steps, {plan['tokens'] / 1e6:.1f}M tokens -> {plan['run_dir']}",
              flush=True)
        record = run_one(plan["run"], plan["config"], plan["overrides"], plan["run_dir"], plan["steps"],
                         args.launcher, limit, args.smoke, args.keep_checkpoints)
        record["tokens"] = plan["tokens"]
        done.append(record)
        summary = sweep_report.summarize(plan["run_dir"]) or {}
        print(f"[sweep] {name}: {record['status']} in {record['wall_s']:.0f} s"
              + (f", val loss {summary['val_loss']:.4f}" if summary.get("val_loss") is not None else "")
              + (f"\n{record['log_tail']}" if record.get("log_tail") else ""), flush=True)
        report(args, plans, env, data)
    result = report(args, plans, env, data)
    print(f"[sweep] done in {time.perf_counter() - start:.0f} s; wrote {os.path.join(args.out_dir, 'results.md')}")
    for e in result["expectations"]:
        print(f"  - {e['claim']}: {e['held']} ({e['evidence']})")
    ok = all(r.get("status") == "ok" for r in result["runs"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
