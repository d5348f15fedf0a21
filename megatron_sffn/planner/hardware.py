"""The planner's constants, each with where it comes from.

"calibrated" means fitted to a measurement named beside it (docs/performance.md); the
others are engineering guesses until the 4-GPU runs of issue 14 measure them. Every one is
a flag of tools/plan_layout.py. GB here is 2^30 bytes, as the benchmarks report memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

GIB = float(2 ** 30)

# Achievable training TFLOP/s per GPU on the model's FLOPs (model/accounting.py conventions),
# bf16, compiled blocks, for the time that is neither optimizer, collective nor per-layer host
# overhead. Calibrated: 1.3B, one H100, micro-batch 8 x 1024, fused optimizer, compiled (dense
# 152.0 ms, lowrank 114.4 ms per step; blockdense 165.8 / blockshuffle 165.2 ms with DeepSpeed's
# optimizer), by solving the step-time model below for the rate.
ACHIEVABLE_TFLOPS = {"dense": 535.0, "lowrank": 430.0, "blockdense": 305.0, "blockshuffle": 315.0}

# Optimizer step per local parameter it updates (AdamW, gradient norm, bf16 write-back).
# Calibrated: fused 10.7 ms / 744M parameters (profile of the 1.3B lowrank step, H100);
# DeepSpeed's mixed-precision optimizer 13.5 ms more per step (129.3 vs 115.8 ms).
OPTIMIZER_PS_PER_PARAM = {"fused": 14.0, "deepspeed": 32.0}


@dataclass(frozen=True)
class Hardware:
    gpu_memory_gb: float
    gpus_per_node: int = 8
    # None: ACHIEVABLE_TFLOPS of the config's FFN kind; a number overrides every kind
    achievable_tflops: Optional[float] = None
    # peak bf16 dense TFLOP/s for MFU (H100 / H200 SXM)
    peak_tflops: float = 989.0
    # NCCL bus bandwidth inside a node, GB/s. Uncalibrated (NVLink 4 is 450 GB/s per direction;
    # NCCL reaches ~300-370 on 8-64 MiB messages)
    nvlink_gb_s: float = 300.0
    # per-GPU bandwidth between nodes, GB/s. Uncalibrated (400 Gb/s InfiniBand per GPU ~ 45)
    network_gb_s: float = 45.0
    # fixed cost of one collective call, microseconds. Uncalibrated
    collective_latency_us: float = 10.0
    # host/launch time per transformer block per micro-batch that the GPU waits for, ms.
    # Calibrated: 7.7 ms of GPU idle per step over 24 blocks (1.3B lowrank compiled profile)
    layer_overhead_ms: float = 0.3
    # host time to issue one block's forward and backward (one micro-batch) outside tensor
    # parallelism, ms: a floor under a micro-batch's time where the GPU work is smaller (small
    # micro-batches). Calibrated on one H200, 1.3B lowrank compiled (2026-11-29): micro-batch 2
    # x 4 ran 192.5 ms per step, 1.89 ms per block and micro-batch; the bare model at micro-batch
    # 1 took 1.6-2.3 ms per block over three calls (benchmarks/diagnostics/bench_tp_path.py)
    host_block_ms: float = 1.8
    # the same with training.cuda_graphs (replayed blocks): 0.69 ms per block at micro-batch 1
    host_block_graphs_ms: float = 0.7
    # host time on a host-bound tensor-parallel rank (the GPU waits for it), in two parts, fitted
    # together to the ten 4-GPU TP runs of 2026-11-28 (1.3B and 6.7B, TP2/TP4/TP2xPP2, SP on and
    # off; RMS log error 0.214 -> 0.184, and SP's cost against no SP now shows: measured
    # 0.69-0.71x the tokens/s, predicted 0.82-0.84x, before 1.0x). docs/performance.md
    # - per block and micro-batch (region autograd functions, the rest of the TP path), ms
    tp_layer_host_ms: float = 3.25
    # - per tensor-group collective call (SP makes about twice the calls per block), us; the
    #   fit's 225 sits beside one H200's 105 eager / 205 compiled per call in the model
    #   (benchmarks/diagnostics/bench_tp_path.py --modes ...-nocomm, 2026-11-29)
    tp_call_host_us: float = 225.0
    # fraction of the tensor-parallel collective time hidden behind GEMMs. Uncalibrated; 0
    # until issue 14's overlap is measured
    tp_overlap: float = 0.0
    # fraction of a data-parallel reduction hidden behind the last micro-batch's backward
    # (outside a pipeline). Calibrated loosely: 96.5% weak scaling on 2 H200 (1.3B lowrank)
    dp_overlap: float = 0.9
    # memory torch.cuda.max_memory_allocated does not see but the GPU must hold: CUDA context,
    # NCCL buffers, allocator fragmentation. Uncalibrated. (The allocated part needs no extra
    # term: without it the model is within -9%..+4% of the measured 1-2 GPU peaks, docs.)
    overhead_gb: float = 3.0
    optimizer_ps_per_param: Dict[str, float] = field(default_factory=lambda: dict(OPTIMIZER_PS_PER_PARAM))

    def tflops_for(self, ffn_kind: str) -> float:
        return self.achievable_tflops or ACHIEVABLE_TFLOPS[ffn_kind]
