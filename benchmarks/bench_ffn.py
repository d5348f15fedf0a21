"""FFN block benchmark: the repo's FeedForward (fc1 + bias + GELU + fc2 + bias) for every
structure, on every dispatch path, against the dense block and a plain-PyTorch MLP.

Sections (each writes into one JSON; a failure is logged and the next section runs):
  env      device, versions, date; measured ceilings (device copy, bf16 8192^3 GEMM)
  check    bf16 numerics on the device: every kind and path vs a float64 reference, and the
           Triton GEMM epilogues on NaN-poisoned outputs
  gemm     the two fused products alone (Triton, several tiles) vs cuBLAS + the separate
           elementwise kernel they replace, per structure at d=2048, 32K tokens
  paths    fwd and fwd+bwd of every kind on every path (+ plain PyTorch MLPs), d=2048
  sweep    auto path, widths x tokens, fwd and fwd+bwd, speed-up vs dense
  decode   1-256 tokens, bf16 weights, no grad: dense vs structured vs pre-merged (the
           structured block running its merged dense matrices), eager and CUDA-graph replay
  profile  kernel time table of one fwd+bwd (dense, lowrank 32%) on the auto path

Usage (GPU): PYTHONUNBUFFERED=1 python benchmarks/bench_ffn.py --out DIR
Smoke test (CPU, Triton interpreter, tiny sizes, fp16): python benchmarks/bench_ffn.py --smoke
Timing: triton.testing.do_bench medians (CUDA events, L2 flushed between calls).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import sys
import time
import traceback

SMOKE = "--smoke" in sys.argv
if SMOKE:  # the interpreter must be chosen before Triton is imported
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from megatron_sffn.config import FFNConfig, ModelConfig  # noqa: E402
from megatron_sffn.inference.premerge import PreMergedMap  # noqa: E402
from megatron_sffn.model.block import FeedForward  # noqa: E402
from megatron_sffn.model.init import initialize_piece  # noqa: E402
from megatron_sffn.parallel.mappings import TensorParallel  # noqa: E402
from megatron_sffn.structured.kernels import dispatch, force_path, products  # noqa: E402

KINDS = ("dense", "lowrank32", "lowrank63", "blockdense", "blockshuffle")
PATH_NAMES = ("reference", "elementwise", "fused")


def kind_spec(kind: str, d: int) -> FFNConfig:
    """The paper's structures scaled with width: ~32% / ~63% of the dense FFN parameters."""
    if kind == "dense":
        return FFNConfig(kind="dense", init="normal")
    if kind == "lowrank32":
        return FFNConfig(kind="lowrank", rank=d // 4, init="normal")
    if kind == "lowrank63":
        return FFNConfig(kind="lowrank", rank=d // 2, init="normal")
    if kind == "blockdense":
        return FFNConfig(kind="blockdense", rank=3 * d // 8, blocks=4, init="normal")
    if kind == "blockshuffle":
        return FFNConfig(kind="blockshuffle", blocks=4, init="normal")
    raise ValueError(kind)


def make_ffn(kind: str, d: int, device, seed: int = 0) -> FeedForward:
    cfg = ModelConfig(hidden_size=d, ffn_hidden_size=4 * d, num_heads=max(1, d // 128), ffn=kind_spec(kind, d))
    ffn = FeedForward(cfg, layer=1, tp=TensorParallel.single(), guided=False, guide_state=None).to(device)
    initialize_piece(ffn, "ffn", seed=seed, std=0.02, ffn_init="normal", device=device)
    with torch.no_grad():
        for lin in ffn.linears():
            lin.bias.normal_(0.0, 0.02)
    return ffn


def ffn_macs_per_token(ffn) -> int:
    """Multiply-adds per token of the two maps (biases excluded) = their weight count."""
    return sum(p.numel() for lin in ffn.linears() for p in lin.structure.parameters())


class PlainMLP(nn.Module):
    """The plain-PyTorch reference: nn.Linear layers (biases fused by cuBLAS), nn.GELU."""

    def __init__(self, d: int, rank=None):
        super().__init__()
        f = 4 * d
        if rank is None:
            layers = [nn.Linear(d, f), nn.GELU(), nn.Linear(f, d)]
        else:
            layers = [nn.Linear(d, rank, bias=False), nn.Linear(rank, f), nn.GELU(),
                      nn.Linear(f, rank, bias=False), nn.Linear(rank, d)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class OnPath(nn.Module):
    """Runs `model` with one dispatch path forced (to compare paths inside one table)."""

    def __init__(self, model, path):
        super().__init__()
        self.model, self.path = model, path

    def forward(self, x):
        with force_path(self.path):
            return self.model(x)


class PreMergedFFN(nn.Module):
    """A structured FeedForward whose maps run their merged dense matrices (repo's PreMergedMap)."""

    def __init__(self, ffn: FeedForward):
        super().__init__()
        for lin in ffn.linears():
            lin.structure = PreMergedMap(lin.structure, threshold=1 << 62)
        self.ffn = ffn

    def forward(self, x):
        return self.ffn(x)


# -- timing -------------------------------------------------------------------------------

class Timer:
    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn, warmup_ms=25, rep_ms=100) -> float:
        """Median milliseconds per call."""
        if self.cuda:
            import triton.testing
            return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
        fn()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return sorted(times)[1]

    def loop(self, fn, calls=50, trials=5) -> float:
        """Median ms per call over back-to-back calls, no cache flush: an eager caller's
        steady state (launch-bound when the GPU work is shorter than the Python + launches)."""
        for _ in range(5):
            fn()
        if not self.cuda:
            return self(fn)
        torch.cuda.synchronize()
        times = []
        for _ in range(trials):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / calls)
        return sorted(times)[len(times) // 2]

    def graph(self, fn, rep_ms=50) -> float:
        if not self.cuda:
            return float("nan")
        import triton.testing
        return float(triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median"))


class Bench:
    def __init__(self, args):
        self.args = args
        self.device = torch.device("cpu" if args.smoke else "cuda")
        self.dtype = torch.float16 if args.smoke else torch.bfloat16  # interpreter: fp16 dots only
        self.time = Timer(self.device)
        self.results = {"sections": {}, "errors": {}}
        os.makedirs(args.out, exist_ok=True)
        self.json_path = os.path.join(args.out, "bench_ffn.json")
        self.started = time.time()

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype)

    def save(self):
        with open(self.json_path, "w") as f:
            json.dump(self.results, f, indent=1)

    def log(self, *parts):
        print(*parts, flush=True)

    # -- step functions ---------------------------------------------------------------
    def train_step(self, model, tokens, d):
        x = torch.randn(tokens, d, device=self.device, requires_grad=True)
        grad = torch.randn(tokens, d, device=self.device, dtype=self.dtype)
        params = list(model.parameters())

        def step():
            for p in params:
                p.grad = None
            x.grad = None
            with self.autocast():
                y = model(x)
            y.backward(grad)
        return step

    def fwd_step(self, model, tokens, d):
        x = torch.randn(tokens, d, device=self.device)

        def step():
            with torch.no_grad(), self.autocast():
                model(x)
        return step

    # -- sections ---------------------------------------------------------------------
    def section_env(self):
        env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "python": platform.python_version(), "torch": torch.__version__,
               "cuda": torch.version.cuda, "host": platform.node()}
        try:
            import triton
            env["triton"] = triton.__version__
        except Exception:
            env["triton"] = None
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(0)
            env.update(device=props.name, sms=props.multi_processor_count,
                       memory_gb=round(props.total_memory / 2**30, 1))
            n = 1 << 28  # 512 MiB of bf16 each way
            a = torch.randn(n, device="cuda", dtype=torch.bfloat16)
            b = torch.empty_like(a)
            ms = self.time(lambda: b.copy_(a))
            env["copy_tb_s"] = round(2 * a.numel() * 2 / ms / 1e9, 2)
            m = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
            ms = self.time(lambda: m @ m)
            env["gemm_bf16_8192_tflops"] = round(2 * 8192**3 / ms / 1e9, 1)
            del a, b, m
        else:
            env["device"] = "cpu (smoke)"
        return env

    def section_check(self):
        """bf16 on the device vs float64: every kind, path; outputs and every gradient."""
        out = {}
        d, tokens = self.args.check_width, self.args.check_tokens
        for kind in KINDS:
            ffn = make_ffn(kind, d, self.device, seed=1)
            ref = copy.deepcopy(ffn).double()
            x = torch.randn(tokens, d, device=self.device)
            gy = torch.randn(tokens, d, device=self.device)
            x64 = x.double().requires_grad_()
            y64 = ref(x64)
            y64.backward(gy.double())
            refs = [y64, x64.grad] + [p.grad for p in ref.parameters()]
            for path in PATH_NAMES:
                if path == "fused" and kind not in self.args.check_fused_kinds:
                    continue
                ffn.zero_grad()
                xi = x.clone().requires_grad_()
                with force_path(path), self.autocast():
                    taken = dispatch.choose_path(xi, ffn.fc1.splittable() and ffn.fc2.splittable())
                    y = ffn(xi)
                y.backward(gy.to(y.dtype))
                got = [y, xi.grad] + [p.grad for p in ffn.parameters()]
                errs = [rel(g, r) for g, r in zip(got, refs)]
                out[f"{kind}/{path}"] = {"taken": taken, "max_rel_err": max(errs), "out_rel_err": errs[0]}
                status = "ok" if max(errs) < 1e-2 else "FAIL"
                self.log(f"check {kind:13s} {path:11s} (ran {taken:11s}) max rel err {max(errs):.2e} {status}")
        if self.args.check_fused_kinds:  # the fused path's GEMMs on poisoned outputs
            out["gemm_epilogues"] = self.check_gemm_poisoned()
        out["block_shuffle_exact"] = self.check_shuffle()
        return out

    def check_shuffle(self):
        from megatron_sffn.structured.ops import block_shuffle
        ok = True
        for k, n in ((2048, 4), (8192, 4), (4096, 2), (96, 3)):
            x = torch.randn(1000, k, device=self.device, dtype=self.dtype, requires_grad=True)
            ref = x.reshape(1000, k // n, n).transpose(-1, -2).reshape(1000, k)
            with force_path("elementwise"):  # the kernel, whatever the token threshold
                y = block_shuffle(x, n)
            g = torch.randn_like(y)
            same = torch.equal(y, ref) and torch.equal(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(ref, x, g)[0])
            ok = ok and same
        self.log(f"check block_shuffle kernel exact: {ok}")
        return ok

    def check_gemm_poisoned(self):
        from megatron_sffn.structured.kernels import gemm
        res = {}
        for wshape in [(1000, 264), (4, 200, 72), (4, 48, 256)]:
            w = torch.randn(*wshape, device=self.device).to(self.dtype) * 0.1
            n_in, n_out, tokens = products.in_features(w), products.out_features(w), 333
            x = torch.randn(tokens, n_in, device=self.device).to(self.dtype)
            bias = torch.randn(n_out, device=self.device)
            u = torch.full((tokens, n_out), float("nan"), device=self.device, dtype=self.dtype)
            h = torch.full_like(u, float("nan"))
            a, b = products.forward_operands(x, w)
            gemm.batched_matmul(a, b, products.output_view(u, w), epilogue=gemm.BIAS_GELU,
                                aux=products.output_view(h, w), bias=bias, tile=gemm.pick_tile(*a.shape, b.shape[2]))
            u64 = products.product(x.double(), w.double()) + bias.double()
            g = torch.randn(tokens, n_out, device=self.device).to(self.dtype)
            du = torch.full((tokens, n_in), float("nan"), device=self.device, dtype=self.dtype)
            a, b = products.input_grad_operands(g, w)
            u_in = torch.randn(tokens, n_in, device=self.device).to(self.dtype)
            db = gemm.batched_matmul(a, b, products.input_view(du, w), epilogue=gemm.GELU_BWD,
                                     aux=products.input_view(u_in, w), bias=bias,
                                     tile=gemm.pick_tile(*a.shape, b.shape[2]))
            u64i = u_in.double().requires_grad_()
            F.gelu(u64i).backward(products.input_grad(g.double(), w.double()))
            errs = {"u": rel(u, u64), "h": rel(h, F.gelu(u64)), "du": rel(du, u64i.grad),
                    "dbias": rel(db, u64i.grad.sum(0))}
            res[str(wshape)] = errs
            self.log(f"check gemm {str(wshape):15s} " + " ".join(f"{k} {v:.2e}" for k, v in errs.items()))
        return res

    def section_gemm(self):
        """Each fused product alone vs cuBLAS (+ the elementwise kernel it replaces)."""
        from megatron_sffn.structured.kernels import gemm
        from megatron_sffn.structured.kernels.elementwise import bias_gelu_backward, bias_gelu_forward
        d, tokens = self.args.gemm_width, self.args.gemm_tokens
        tiles = [gemm.TileConfig(*t) for t in self.args.tiles]
        out = {}
        for kind in KINDS:
            ffn = make_ffn(kind, d, self.device)
            with torch.no_grad(), self.autocast():
                x = torch.randn(tokens, d, device=self.device)
                z, w1 = ffn.fc1.last_product_operands(x)
            z = z.to(self.dtype).contiguous()
            w1 = w1.detach().to(self.dtype)
            w2 = ffn.fc2.first_product_weight().detach().to(self.dtype)
            b1 = ffn.fc1.bias.detach()
            u = products.product(z, w1) + b1.to(self.dtype)  # real data in every buffer
            h = F.gelu(u)
            g = torch.randn(tokens, products.out_features(w2), device=self.device, dtype=self.dtype)
            flops_fwd = 2 * tokens * w1.numel()
            flops_bwd = 2 * tokens * w2.numel()
            row = {"fwd_flop": flops_fwd, "bwd_flop": flops_bwd}
            row["fwd_cublas_ms"] = self.time(lambda: products.product(z, w1))
            row["fwd_cublas_plus_elementwise_ms"] = self.time(
                lambda: bias_gelu_forward(products.product(z, w1), b1, self.dtype))
            row["bwd_cublas_ms"] = self.time(lambda: products.input_grad(g, w2))
            row["bwd_cublas_plus_elementwise_ms"] = self.time(
                lambda: bias_gelu_backward(products.input_grad(g, w2), u, b1))
            a, b = products.forward_operands(z, w1)
            ga, gb = products.input_grad_operands(g, w2)
            for tile in tiles:
                name = "x".join(str(v) for v in tile)
                try:
                    row[f"fwd_triton_{name}_ms"] = self.time(lambda: gemm.batched_matmul(
                        a, b, products.output_view(u, w1), epilogue=gemm.BIAS_GELU,
                        aux=products.output_view(h, w1), bias=b1, tile=tile))
                    du = torch.empty_like(u)
                    row[f"bwd_triton_{name}_ms"] = self.time(lambda: gemm.batched_matmul(
                        ga, gb, products.input_view(du, w2), epilogue=gemm.GELU_BWD,
                        aux=products.input_view(u, w2), bias=b1, tile=tile))
                except Exception as exc:  # a tile that does not fit (shared memory) is skipped
                    row[f"error_{name}"] = repr(exc)[:200]
            out[kind] = row
            best_f = min((v, k) for k, v in row.items() if k.startswith("fwd_triton"))
            best_b = min((v, k) for k, v in row.items() if k.startswith("bwd_triton"))
            self.log(f"gemm {kind:13s} fwd: cublas {row['fwd_cublas_ms']:.3f} +ew {row['fwd_cublas_plus_elementwise_ms']:.3f}"
                     f" triton best {best_f[0]:.3f} ({best_f[1]}) {flops_fwd / best_f[0] / 1e9:.0f} TF/s | bwd: cublas"
                     f" {row['bwd_cublas_ms']:.3f} +ew {row['bwd_cublas_plus_elementwise_ms']:.3f} triton best"
                     f" {best_b[0]:.3f} ({best_b[1]})")
            del ffn, z, u, h, g
        return out

    def section_paths(self):
        d, tokens = self.args.paths_width, self.args.paths_tokens
        out = {}
        for kind in KINDS:
            ffn = make_ffn(kind, d, self.device)
            macs = ffn_macs_per_token(ffn)
            for path in PATH_NAMES:
                with force_path(path):
                    tb = self.time(self.train_step(ffn, tokens, d))
                    tf = self.time(self.fwd_step(ffn, tokens, d))
                    tb2 = self.time(self.train_step(ffn, tokens, d))  # repeat: the spread is the noise
                out[f"{kind}/{path}"] = {"fwd_bwd_ms": tb, "fwd_bwd_ms_repeat": tb2, "fwd_ms": tf,
                                         "fwd_bwd_tflops": 6 * tokens * macs / tb / 1e9}
                self.log(f"paths {kind:13s} {path:11s} fwd+bwd {tb:7.3f} ms (again {tb2:7.3f}) fwd {tf:7.3f} ms"
                         f" {6 * tokens * macs / tb / 1e9:6.0f} TF/s")
            del ffn
        out.update(self.original_and_compiled(d, tokens))
        for name, rank in (("plain_dense", None), ("plain_lowrank32", d // 4), ("plain_lowrank63", d // 2)):
            mlp = PlainMLP(d, rank).to(self.device)
            tb = self.time(self.train_step(mlp, tokens, d))
            tf = self.time(self.fwd_step(mlp, tokens, d))
            out[name] = {"fwd_bwd_ms": tb, "fwd_ms": tf}
            self.log(f"paths {name:25s} fwd+bwd {tb:7.3f} ms fwd {tf:7.3f} ms")
        base = out["dense/elementwise"]["fwd_bwd_ms"]
        plain = out["plain_dense"]["fwd_bwd_ms"]
        for kind in KINDS[1:]:
            t = out[f"{kind}/elementwise"]["fwd_bwd_ms"]
            self.log(f"speed-up fwd+bwd {kind:13s} (auto path) vs our dense {base / t:.2f}x, vs plain dense"
                     f" {plain / t:.2f}x; original code {out['dense/original']['fwd_bwd_ms'] / out[f'{kind}/original']['fwd_bwd_ms']:.2f}x")
        return out

    def original_and_compiled(self, d, tokens):
        """`original`: the code before this work (an fp32 bias promoted autocast's bf16 outputs to
        fp32; PyTorch's shuffle copy); `compiled`: torch.compile of the reference path."""
        from megatron_sffn.structured.linear import ParallelLinear
        out = {}
        patched = ParallelLinear.add_bias
        ParallelLinear.add_bias = lambda lin, y: y + lin.bias if lin.bias is not None else y
        try:
            for kind in KINDS:
                ffn = make_ffn(kind, d, self.device)
                with force_path("reference"):
                    tb = self.time(self.train_step(ffn, tokens, d))
                    tf = self.time(self.fwd_step(ffn, tokens, d))
                out[f"{kind}/original"] = {"fwd_bwd_ms": tb, "fwd_ms": tf}
                self.log(f"paths {kind:13s} original    fwd+bwd {tb:7.3f} ms fwd {tf:7.3f} ms")
                del ffn
        finally:
            ParallelLinear.add_bias = patched
        for kind in self.args.compile_kinds:
            if time.time() - self.started > self.args.compile_deadline_s:
                self.log(f"paths {kind}: compile skipped (time)")
                continue
            try:
                ffn = make_ffn(kind, d, self.device)
                compiled = torch.compile(ffn)
                with force_path("reference"):
                    start = time.time()
                    self.train_step(compiled, tokens, d)()
                    compile_s = time.time() - start
                    tb = self.time(self.train_step(compiled, tokens, d))
                out[f"{kind}/compiled"] = {"fwd_bwd_ms": tb, "compile_s": compile_s}
                self.log(f"paths {kind:13s} compiled    fwd+bwd {tb:7.3f} ms (compile {compile_s:.0f} s)")
                del ffn, compiled
            except Exception as exc:
                out[f"{kind}/compiled"] = {"error": repr(exc)[:300]}
                self.log(f"paths {kind} compile failed: {exc!r}"[:300])
        return out

    def section_crossover(self):
        """reference vs elementwise path by token count (eager, back-to-back calls): where the
        Triton launches stop costing more than they save (sets ELEMENTWISE_MIN_TOKENS)."""
        d, out = self.args.paths_width, []
        for kind in ("dense", "lowrank32"):
            ffn = make_ffn(kind, d, self.device)
            for tokens in self.args.crossover_tokens:
                row = {"kind": kind, "width": d, "tokens": tokens}
                for path in ("reference", "elementwise"):
                    with force_path(path):
                        row[f"{path}_fwd_bwd_ms"] = self.time.loop(self.train_step(ffn, tokens, d), calls=20, trials=3)
                        row[f"{path}_fwd_ms"] = self.time.loop(self.fwd_step(ffn, tokens, d), calls=20, trials=3)
                out.append(row)
                self.log(f"crossover {kind:10s} T={tokens:6d} fwd+bwd ref {row['reference_fwd_bwd_ms']:.3f} ew "
                         f"{row['elementwise_fwd_bwd_ms']:.3f} | fwd ref {row['reference_fwd_ms']:.3f} ew "
                         f"{row['elementwise_fwd_ms']:.3f} ms")
            del ffn
        return out

    def section_sweep(self):
        out = []
        for d in self.args.widths:
            for tokens in self.args.tokens:
                dense_tb = dense_tf = None
                for kind in KINDS:
                    ffn = make_ffn(kind, d, self.device)
                    macs = ffn_macs_per_token(ffn)
                    tb = self.time(self.train_step(ffn, tokens, d), rep_ms=self.args.rep_ms)
                    tf = self.time(self.fwd_step(ffn, tokens, d), rep_ms=self.args.rep_ms)
                    if kind == "dense":
                        dense_tb, dense_tf = tb, tf
                    row = {"width": d, "tokens": tokens, "kind": kind, "macs_per_token": macs,
                           "fwd_bwd_ms": tb, "fwd_ms": tf, "speedup_fwd_bwd": dense_tb / tb,
                           "speedup_fwd": dense_tf / tf, "fwd_bwd_tflops": 6 * tokens * macs / tb / 1e9}
                    out.append(row)
                    self.log(f"sweep d={d:5d} T={tokens:6d} {kind:13s} fwd+bwd {tb:8.3f} ms ({row['speedup_fwd_bwd']:.2f}x)"
                             f" fwd {tf:8.3f} ms ({row['speedup_fwd']:.2f}x) {row['fwd_bwd_tflops']:.0f} TF/s")
                    del ffn
                    self.save_partial("sweep", out)
        return out

    def section_decode(self):
        out = []
        for d in self.args.decode_widths:
            dense = make_ffn("dense", d, self.device).to(self.dtype)
            models = {"dense": dense, "dense@reference": OnPath(dense, "reference")}
            for kind in KINDS[1:]:
                models[kind] = make_ffn(kind, d, self.device).to(self.dtype)
                models[kind + "+premerge"] = PreMergedFFN(make_ffn(kind, d, self.device).to(self.dtype))
                if kind == "lowrank32":
                    models[kind + "@reference"] = OnPath(models[kind], "reference")
            for tokens in self.args.decode_tokens:
                x = torch.randn(tokens, d, device=self.device, dtype=self.dtype)
                row = {"width": d, "tokens": tokens}
                for name, model in models.items():
                    def call(model=model):
                        with torch.no_grad():
                            model(x)
                    row[f"{name}_ms"] = self.time.loop(call)
                    if d in self.args.graph_widths:
                        row[f"{name}_graph_ms"] = self.time.graph(call)
                out.append(row)
                self.log(f"decode d={d:5d} T={tokens:4d} " + " ".join(
                    f"{k[:-3]} {v * 1e3:.0f}us" for k, v in row.items() if k.endswith("_ms")))
                self.save_partial("decode", out)
            del models, dense
        return out

    def section_profile(self):
        from torch.profiler import ProfilerActivity, profile
        d, tokens = self.args.paths_width, self.args.paths_tokens
        lines = []
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        for kind in ("dense", "lowrank32", "blockshuffle"):
            ffn = make_ffn(kind, d, self.device)
            step = self.train_step(ffn, tokens, d)
            for _ in range(3):
                step()
            with profile(activities=acts) as prof:
                for _ in range(3):
                    step()
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
            sort = "cuda_time_total" if self.device.type == "cuda" else "cpu_time_total"
            lines.append(f"== {kind} d={d} T={tokens} fwd+bwd x3 (auto path)\n")
            lines.append(prof.key_averages().table(sort_by=sort, row_limit=18, max_name_column_width=70))
            del ffn
        with open(os.path.join(self.args.out, "profile.txt"), "w") as f:
            f.write("\n".join(lines))
        return {"file": "profile.txt"}

    def save_partial(self, name, value):
        self.results["sections"][name] = value
        self.save()

    def run(self, sections):
        for name in sections:
            start = time.time()
            try:
                self.results["sections"][name] = getattr(self, f"section_{name}")()
            except Exception:
                self.results["errors"][name] = traceback.format_exc()
                self.log(f"section {name} FAILED:\n{traceback.format_exc()}")
            self.log(f"-- section {name} took {time.time() - start:.1f} s")
            self.save()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


def rel(out, ref) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def plot(results, path):
    """Speed-up vs dense (fwd+bwd, largest token count) over width; decode latency (CUDA-graph
    replay where measured, else eager) over tokens in flight at two widths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sweep = results["sections"].get("sweep") or []
    decode = results["sections"].get("decode") or []
    widths = sorted({r["width"] for r in sweep})
    dec_widths = sorted({r["width"] for r in decode})
    shown = [w for w in (1024, 2048, 5120) if w in dec_widths] or dec_widths[:2]
    fig, axes = plt.subplots(1, 1 + len(shown), figsize=(5.2 * (1 + len(shown)), 4.6))
    axes = list(axes) if len(shown) else [axes]
    ax = axes[0]
    big = max((r["tokens"] for r in sweep), default=0)
    for kind in KINDS[1:]:
        rows = [r for r in sweep if r["kind"] == kind and r["tokens"] == big]
        ax.plot([r["width"] for r in rows], [r["speedup_fwd_bwd"] for r in rows], "o-", label=kind)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xlabel("width d (ffn = 4d)")
    ax.set_ylabel(f"FFN fwd+bwd speed-up vs dense ({big} tokens)")
    ax.set_xticks(widths)
    ax.legend()
    ax.grid(alpha=0.3)
    for ax, d in zip(axes[1:], shown):
        rows = [r for r in decode if r["width"] == d]
        graph = "dense_graph_ms" in rows[0]
        suffix = "_graph_ms" if graph else "_ms"
        tokens = [r["tokens"] for r in rows]
        for key, style in (("dense", "k-"), ("lowrank32", "o-"), ("lowrank32+premerge", "o--"),
                           ("lowrank63", "v-"), ("blockdense", "s-"), ("blockshuffle", "^-")):
            if key + suffix in rows[0]:
                ax.plot(tokens, [r[key + suffix] * 1e3 for r in rows], style, label=key)
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("tokens in flight")
        ax.set_ylabel(f"FFN forward, us (d={d}, bf16, {'CUDA graph' if graph else 'eager'})")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    env = results["sections"].get("env", {})
    fig.suptitle(f"{env.get('device', '?')}  torch {env.get('torch', '?')}  triton {env.get('triton', '?')}"
                 f"  {str(env.get('date', ''))[:10]}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def merge_results(paths):
    """Sections of several result files, later files filling in what earlier ones lack."""
    merged = {"sections": {}, "errors": {}, "sources": []}
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        for name, value in data["sections"].items():
            merged["sections"].setdefault(name, value)
        merged["sources"].append(os.path.basename(path))
    return merged


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--plot-from", nargs="+", metavar="JSON",
                   help="only redraw the plot (into --out) and the table from saved result files")
    p.add_argument("--sections", default="env,check,paths,crossover,profile,sweep,decode")
    p.add_argument("--widths", default="1024,1536,2048,3072,4096,5120")
    p.add_argument("--tokens", default="2048,8192,32768")
    p.add_argument("--decode-widths", default="1024,2048,3072,5120")
    p.add_argument("--decode-tokens", default="1,4,16,64,256")
    p.add_argument("--graph-widths", default="1024,2048,3072,5120")
    p.add_argument("--rep-ms", type=float, default=100)
    p.add_argument("--compile-kinds", default=",".join(KINDS))
    p.add_argument("--crossover-tokens", default="128,256,512,1024,2048,4096,8192")
    p.add_argument("--compile-deadline-s", type=float, default=200)
    p.add_argument("--check-fused-kinds", default="lowrank32,blockshuffle")
    p.add_argument("--decode-rep-ms", type=float, default=20)
    p.add_argument("--tiles", default="128,256,64,8,8,3;128,128,64,8,4,4;256,128,64,8,8,3;128,256,64,8,8,4")
    args = p.parse_args()
    if args.plot_from:
        results = merge_results(args.plot_from)
        os.makedirs(args.out, exist_ok=True)
        plot(results, os.path.join(args.out, "bench_ffn.png"))
        summary(results)
        return
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    args.widths, args.tokens = ints(args.widths), ints(args.tokens)
    args.decode_widths, args.decode_tokens, args.graph_widths = (
        ints(args.decode_widths), ints(args.decode_tokens), ints(args.graph_widths))
    args.tiles = [tuple(ints(t)) for t in args.tiles.split(";") if t]
    args.compile_kinds = [k for k in args.compile_kinds.split(",") if k]
    args.crossover_tokens = ints(args.crossover_tokens)
    args.check_fused_kinds = [k for k in args.check_fused_kinds.split(",") if k]
    args.check_width, args.check_tokens = 2048, 4096
    args.gemm_width = args.paths_width = 2048
    args.gemm_tokens = args.paths_tokens = 32768
    if args.smoke:
        dispatch.ALLOW_CPU_INTERPRETER = True
        args.widths, args.tokens = [64], [48]
        args.decode_widths, args.decode_tokens, args.graph_widths = [64], [1, 4], []
        args.check_width, args.check_tokens = 64, 40
        args.gemm_width = args.paths_width = 64
        args.gemm_tokens = args.paths_tokens = 48
        args.tiles = [(32, 32, 16, 2, 4, 2)]
        args.crossover_tokens = [8, 48]
        args.out = os.path.join("/tmp", "bench_ffn_smoke")
    bench = Bench(args)
    bench.run([s for s in args.sections.split(",") if s])
    try:
        plot(bench.results, os.path.join(args.out, "bench_ffn.png"))
    except Exception:
        bench.log("plot failed:\n" + traceback.format_exc())
    summary(bench.results)


def summary(results):
    """The short table printed last."""
    env = results["sections"].get("env", {})
    print(f"\n== {env.get('device')} | torch {env.get('torch')} | triton {env.get('triton')} | {env.get('date')}"
          f" | copy {env.get('copy_tb_s')} TB/s | GEMM {env.get('gemm_bf16_8192_tflops')} TF/s")
    paths = results["sections"].get("paths") or {}
    if paths:
        cols = ("original",) + PATH_NAMES + ("compiled",)
        print(f"{'d=2048 T=32768 fwd+bwd ms':26s}" + "".join(f"{p:>12s}" for p in cols)
              + "  x vs dense: ours(ew) / plain dense / original")
        plain = paths.get("plain_dense", {}).get("fwd_bwd_ms", math.nan)
        for kind in KINDS:
            cells = [paths.get(f"{kind}/{p}", {}).get("fwd_bwd_ms", math.nan) for p in cols]
            ratio = ""
            if kind != "dense":
                ew = cells[2]
                ratio = (f"  {paths['dense/elementwise']['fwd_bwd_ms'] / ew:.2f} / {plain / ew:.2f} / "
                         f"{paths['dense/original']['fwd_bwd_ms'] / cells[0]:.2f}")
            print(f"{kind:26s}" + "".join(f"{c:12.3f}" for c in cells) + ratio)
        for name in ("plain_dense", "plain_lowrank32", "plain_lowrank63"):
            if name in paths:
                print(f"{name:28s}{paths[name]['fwd_bwd_ms']:13.3f}")
    sweep = results["sections"].get("sweep") or []
    if sweep:
        print("speed-up fwd+bwd vs dense (auto path), largest token count:")
        big = max(r["tokens"] for r in sweep)
        widths = sorted({r["width"] for r in sweep})
        print(f"{'kind':14s}" + "".join(f"{w:>8d}" for w in widths))
        for kind in KINDS[1:]:
            cells = {r["width"]: r["speedup_fwd_bwd"] for r in sweep if r["kind"] == kind and r["tokens"] == big}
            print(f"{kind:14s}" + "".join(f"{cells.get(w, math.nan):8.2f}" for w in widths))
    if results["errors"]:
        print("sections with errors:", ", ".join(results["errors"]))


if __name__ == "__main__":
    main()
