"""Predicted seconds per optimizer step of one layout.

Per micro-batch and pipeline stage:
  compute     the stage's training FLOPs on this rank (pieces.py: sharded weights on every
              token, replicated ones on every token, or on the rank's 1/t under SP)
              / achievable TFLOP/s
  recompute   activation checkpointing runs each block's forward again: 1/3 of its FLOPs
  host        Hardware.layer_overhead_ms per block (launch and Python time the GPU waits for),
              + under tensor parallelism (host-bound there) Hardware.tp_layer_host_ms per block
              and Hardware.tp_call_host_us per tensor-group collective call; outside it, the
              wait until the host has issued the blocks (Hardware.host_block_ms per block, a
              floor under the micro-batch: small micro-batches are host-bound)
  tensor      the tensor group's collectives (design.md's count: per block one region entry
              and one exit for attention and for the FFN, of T x d for attention and dense FFNs,
              T x r for LowRank/BlockDense, T x min(d, f) for BlockShuffle, + T x d for an
              active guide; all-reduce without SP, all-gather + reduce-scatter with it, plus
              the backward re-gather of a d-wide column input kept as a token shard, and the
              gradient sum of replicated weights: per use with DeepSpeed's optimizer, one flat
              fp32 all-reduce per step with the fused one), ring bus bytes / NVLink bandwidth +
              a latency per call
  p2p         pipeline sends of the stage's output forward and its gradient back
Then per step:
  pipeline    1F1B: (m + p - 1) x the slowest stage's micro-batch time (bubble (p-1)/(m+p-1))
  data        gradient reduction of the fp32 main gradients (all-reduce, or reduce-scatter +
              all-gather of the bf16 weights under ZeRO 1/2), hidden behind the last
              micro-batch's backward up to Hardware.dp_overlap outside a pipeline (ZeRO 2:
              every micro-batch's); a pipeline reduces after its backward, nothing hidden
  optimizer   local parameters it updates x Hardware.optimizer_ps_per_param
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence, Tuple

from ..config import ModelConfig
from .activations import BF16, bottleneck_width
from .hardware import Hardware
from .layout import Layout
from .pieces import Piece

FP32 = 4


@dataclass
class StepTime:
    compute: float          # seconds per step, summed over the micro-batches of the slowest stage
    recompute: float
    host: float
    tensor_comm: float
    pipeline_p2p: float
    bubble: float
    data_comm: float        # exposed part only
    optimizer: float

    @property
    def total(self) -> float:
        return sum(asdict(self).values())

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def _ring(kind: str, payload: float, t: int) -> float:
    """Bytes each rank sends for a collective over t ranks whose full result is `payload` bytes."""
    if t == 1:
        return 0.0
    return payload * (2.0 if kind == "all_reduce" else 1.0) * (t - 1) / t


def _region(payload: float, t: int, sp: bool, regather: bool, recompute: bool) -> Tuple[float, int]:
    """(bytes, calls) of one region entry or exit: an all-reduce one way, or under SP an
    all-gather + reduce-scatter (+ the backward re-gather of a d-wide column input)."""
    if t == 1:
        return 0.0, 0
    if not sp:
        calls = 1 + (1 if recompute else 0)
        return _ring("all_reduce", payload, t) * calls, calls
    calls = 2 + (1 if regather else 0) + (1 if recompute else 0)
    return _ring("gather", payload, t) * calls, calls


def block_collectives(m: ModelConfig, piece: Piece, layout: Layout, guide_fraction: float,
                      partials_per_micro_batch: bool = True) -> Tuple[float, int]:
    """(bytes sent per rank, calls) of one block's tensor-group traffic for one micro-batch.
    partials_per_micro_batch: DeepSpeed's optimizer sums the SP-replicated weights' partial
    gradients per use (hooks); the fused one once per step (partial_sum_per_step)."""
    t, sp, ckpt = layout.tensor, layout.sequence_parallel and layout.tensor > 1, layout.activation_checkpointing
    tokens = layout.micro_batch * m.seq_length
    d = m.hidden_size
    kind = piece.ffn_kind
    guided = guide_fraction > 0 and piece.guide_params > 0
    width = d if kind == "dense" else bottleneck_width(m, kind)
    guide = guide_fraction * d if guided else 0.0
    # parallel/regions.column_product gathers a d-wide input again in backward under SP; a
    # structured bottleneck (T x r) is kept gathered instead, and the guided path keeps its inputs
    regather = kind == "dense"
    n_column = 2 if m.activation == "swiglu" else 1
    # non-SP recompute repeats only the forward all-reduce of an exit; SP repeats every forward collective
    entries = [(BF16 * tokens * d, True)] + [(BF16 * tokens * (width + guide), regather)] * n_column
    exits = [BF16 * tokens * d, BF16 * tokens * (width + guide)]
    total, calls = 0.0, 0
    for payload, regather in entries:
        b, c = _region(payload, t, sp, regather, ckpt and sp)
        total, calls = total + b, calls + c
    for payload in exits:
        b, c = _region(payload, t, sp, False, ckpt)
        total, calls = total + b, calls + c
    if sp and partials_per_micro_batch:  # partial gradients of replicated weights, summed per use
        total += _ring("all_reduce", BF16 * piece.replicated_params, t)
        calls += piece.replicated_tensors
    return total, calls


def piece_collectives(m: ModelConfig, piece: Piece, layout: Layout, guide_fraction: float,
                      partials_per_micro_batch: bool = True) -> Tuple[float, int]:
    t, sp = layout.tensor, layout.sequence_parallel and layout.tensor > 1
    tokens = layout.micro_batch * m.seq_length
    if t == 1:
        return 0.0, 0
    if piece.kind == "block":
        return block_collectives(m, piece, layout, guide_fraction, partials_per_micro_batch)
    if piece.kind == "embedding":
        return _region(BF16 * tokens * m.hidden_size, t, sp, False, False)
    if piece.kind == "head":  # the head's input enters the region; the loss all-reduces three T-vectors
        b, c = _region(BF16 * tokens * m.hidden_size, t, sp, True, False)
        return b + 3 * _ring("all_reduce", FP32 * tokens, t), c + 3
    if piece.kind == "norm" and sp and partials_per_micro_batch:
        return _ring("all_reduce", BF16 * piece.replicated_params, t), piece.replicated_tensors
    return 0.0, 0


def partial_sum_per_step(layout: Layout, stage: Sequence[Piece], hw: Hardware) -> float:
    """Seconds of the fused optimizer's one flat fp32 all-reduce of the SP-replicated weights'
    partial gradients per step (training/master_optimizer.py: _sum_tensor_partials)."""
    t, sp = layout.tensor, layout.sequence_parallel and layout.tensor > 1
    if not sp:
        return 0.0
    payload = FP32 * sum(p.replicated_params for p in stage)
    return (_ring("all_reduce", payload, t) / (hw.nvlink_gb_s * 1e9) + hw.collective_latency_us * 1e-6
            + hw.tp_call_host_us * 1e-6)


def micro_batch_seconds(m: ModelConfig, layout: Layout, stage: Sequence[Piece], guide_fraction: float,
                        ffn_kind: str, hw: Hardware, partials_per_micro_batch: bool = True,
                        cuda_graphs: bool = False) -> dict:
    """Seconds one micro-batch spends on one stage, by part. Outside tensor parallelism the
    micro-batch takes at least the host's time to issue its blocks (Hardware.host_block_ms, or
    host_block_graphs_ms with CUDA graphs); the wait for the host is counted in `host`. Under
    tensor parallelism the fitted host terms already stand for the host-bound rank, unless the
    blocks are replayed as CUDA graphs (then the graphs' floor applies, as outside TP)."""
    t, sp = layout.tensor, layout.sequence_parallel and layout.tensor > 1
    tokens = layout.micro_batch * m.seq_length
    rate = hw.tflops_for(ffn_kind) * 1e12
    flops = sum(p.train_flops_per_token(t, sp, guide_fraction) for p in stage) * tokens
    block_flops = sum(p.train_flops_per_token(t, sp, guide_fraction) for p in stage if p.kind == "block") * tokens
    comm_bytes, calls = 0.0, 0
    for p in stage:
        b, c = piece_collectives(m, p, layout, guide_fraction, partials_per_micro_batch)
        comm_bytes, calls = comm_bytes + b, calls + c
    tensor = (comm_bytes / (hw.nvlink_gb_s * 1e9) + calls * hw.collective_latency_us * 1e-6) * (1 - hw.tp_overlap)
    p2p = 0.0
    if layout.pipeline > 1:
        boundaries = 1 if (stage[0].kind == "embedding" or stage[-1].kind == "head") else 2
        payload = BF16 * tokens * m.hidden_size / (t if sp else 1)
        p2p = boundaries * 2 * payload / (pipeline_bandwidth(layout, hw) * 1e9)
    blocks = sum(p.kind == "block" for p in stage)
    # replayed as CUDA graphs (under TP only with the experimental opt-in), a block's kernels and
    # collectives leave the host in one launch: the fitted TP host terms do not apply, the floor does
    tp_host = t > 1 and not cuda_graphs
    parts = {"compute": flops / rate,
             "recompute": block_flops / 3.0 / rate if layout.activation_checkpointing else 0.0,
             "host": blocks * 1e-3 * (hw.layer_overhead_ms + (hw.tp_layer_host_ms if tp_host else 0.0))
                     + (calls * hw.tp_call_host_us * 1e-6 if tp_host else 0.0),
             "tensor_comm": tensor, "pipeline_p2p": p2p}
    if not tp_host:
        issue = blocks * 1e-3 * (hw.host_block_graphs_ms if cuda_graphs else hw.host_block_ms)
        parts["host"] += max(0.0, issue - sum(parts.values()))
    return parts


def pipeline_bandwidth(layout: Layout, hw: Hardware) -> float:
    return hw.nvlink_gb_s if layout.gpus <= hw.gpus_per_node else hw.network_gb_s


def data_bandwidth(layout: Layout, hw: Hardware) -> float:
    """Ranks of a data group are `tensor` apart inside one pipeline slice (topology: pipe, data, tensor)."""
    return hw.nvlink_gb_s if layout.tensor * layout.data <= hw.gpus_per_node else hw.network_gb_s


def data_seconds(layout: Layout, params: int, backward_window: float, micro_batches: int, hw: Hardware) -> float:
    """Exposed seconds of the data-parallel gradient reduction of `params` local parameters."""
    d = layout.data
    if d == 1:
        return 0.0
    bw = data_bandwidth(layout, hw) * 1e9
    latency = hw.collective_latency_us * 1e-6
    if layout.zero_stage == 0:
        reduce, gather = _ring("all_reduce", FP32 * params, d) / bw, 0.0
    else:
        reduce, gather = _ring("gather", FP32 * params, d) / bw, _ring("gather", BF16 * params, d) / bw + latency
    hidden = hw.dp_overlap * backward_window if layout.pipeline == 1 else 0.0
    if layout.zero_stage == 2:  # DeepSpeed's ZeRO 2 reduce-scatters every micro-batch's gradients
        return micro_batches * max(0.0, reduce - hidden) + gather
    return max(0.0, reduce - hidden) + gather


def predict_step(m: ModelConfig, layout: Layout, stages: Sequence[Sequence[Piece]], implementation: str,
                 micro_batches: int, guide_fraction: float, guided: bool, ffn_kind: str, hw: Hardware,
                 cuda_graphs: bool = False) -> StepTime:
    per_micro_batch = implementation != "fused"
    per_stage = [micro_batch_seconds(m, layout, s, guide_fraction, ffn_kind, hw, per_micro_batch, cuda_graphs)
                 for s in stages]
    slowest = max(per_stage, key=lambda parts: sum(parts.values()))
    p, n = layout.pipeline, micro_batches
    params = max(sum(pc.params + (pc.guide_params if guided else 0) for pc in s) for s in stages)
    backward_window = 2.0 / 3.0 * (slowest["compute"] + slowest["recompute"])
    data = data_seconds(layout, params, backward_window, n, hw)
    updated = params / (layout.data if layout.zero_stage >= 1 else 1)
    optimizer = updated * hw.optimizer_ps_per_param[implementation] * 1e-12
    if not per_micro_batch:
        optimizer += max(partial_sum_per_step(layout, s, hw) for s in stages)
    return StepTime(compute=n * slowest["compute"], recompute=n * slowest["recompute"], host=n * slowest["host"],
                    tensor_comm=n * slowest["tensor_comm"], pipeline_p2p=n * slowest["pipeline_p2p"],
                    bubble=(p - 1) * sum(slowest.values()), data_comm=data, optimizer=optimizer)
