"""Worker (2 ranks): checks of the model pieces that need a process group but no training.

Rank 0 writes <out>/model_checks.pt with
  pipeline   per config: does a one-stage PipelineModule (pipe 1, data 2) hold GPTModel's
             parameters under GPTModel's names and values, and give GPTModel's loss?
  traffic    per FFN kind (tensor 2): bytes and calls of the collectives on the tensor
             group during one forward and one backward of a FeedForward, counted at
             torch.distributed.all_reduce (every tensor-parallel mapping goes through it)
  errors     the ConfigError message of each bad layout, and how many process groups were
             created before it was raised
  column_bias per FFN kind, tensor 2 with and without SP: does fc1 (column-parallel) take
             its bias shard into the region's product (forward_with_bias not None), and how
             far are its output and gradients from the product followed by a separate add
"""
import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from megatron_sffn.config import ConfigError  # noqa: E402
from megatron_sffn.model import GPTModel  # noqa: E402
from megatron_sffn.model.block import FeedForward  # noqa: E402
from megatron_sffn.model.init import initialize_piece  # noqa: E402
from megatron_sffn.model.pipeline import build_pipeline_module, layout_free_names  # noqa: E402
from megatron_sffn.parallel.topology import build_parallel_state, init_distributed  # noqa: E402
from megatron_sffn.structured.guide import GuideState  # noqa: E402
from tests.distributed.common import SEED, micro_batches, tiny_config  # noqa: E402

TOKENS = 2 * 16  # micro-batch x sequence of the traffic probe


def pipeline_matches_gpt(name: str, cfg) -> dict:
    state = build_parallel_state(cfg)
    guided = cfg.self_guided.enabled
    guide_state = GuideState(active=guided, seed=SEED, reduce_flop=False, alpha=0.5)
    pipe = build_pipeline_module(cfg, state, guide_state, guided)
    gpt = GPTModel(cfg.model, guided=guided, guide_state=guide_state).initialize(SEED)
    want = dict(gpt.named_parameters())
    names = layout_free_names(pipe)
    got = {names[n]: p for n, p in pipe.named_parameters() if n in names}
    ids, labels = next(micro_batches(0, 0, 1))
    with torch.no_grad():
        pipe_loss = float(pipe.loss_fn(pipe(ids), labels))
        gpt_loss = float(gpt.loss(ids, labels))
    return {"names_equal": sorted(got) == sorted(want),
            "max_param_diff": max(float((got[n] - want[n]).abs().max()) for n in want if n in got),
            "pipe_loss": pipe_loss, "gpt_loss": gpt_loss}


class CollectiveCounter:
    """Counts all_reduce calls and bytes on one group by wrapping torch.distributed.all_reduce."""

    def __init__(self, group):
        self.group, self.calls, self.bytes = group, 0, 0
        self._original = dist.all_reduce

    def __enter__(self):
        def counting(tensor, *args, **kwargs):
            if kwargs.get("group", args[1] if len(args) > 1 else None) is self.group:
                self.calls += 1
                self.bytes += tensor.numel() * tensor.element_size()
            return self._original(tensor, *args, **kwargs)
        dist.all_reduce = counting
        return self

    def __exit__(self, *exc):
        dist.all_reduce = self._original

    def take(self):
        out = {"calls": self.calls, "bytes": self.bytes}
        self.calls = self.bytes = 0
        return out


def ffn_traffic(kind: str, guided: bool) -> dict:
    cfg = tiny_config(kind, tensor=2, pipe=1)
    state = build_parallel_state(cfg)
    guide_state = GuideState(active=guided, alpha=0.5, reduce_flop=False)
    ffn = FeedForward(cfg.model, 1, state.tp, guided, guide_state)  # layer 1: structured
    initialize_piece(ffn, "blocks.1.ffn", SEED, 0.02, "paper")
    x = torch.randn(2, 16, cfg.model.hidden_size, generator=torch.Generator().manual_seed(state.rank // 2),
                    requires_grad=True)
    with CollectiveCounter(state.tensor_group) as counter:
        y = ffn(x)
        forward = counter.take()
        y.square().sum().backward()
        backward = counter.take()
    m = cfg.model
    return {"forward": forward, "backward": backward, "hidden": m.hidden_size, "ffn": m.ffn_hidden_size,
            "rank": m.ffn.rank, "tokens": TOKENS}


def column_bias(kind: str, sequence_parallel: bool) -> dict:
    cfg = tiny_config(kind, tensor=2, pipe=1, sequence_parallel=sequence_parallel)
    state = build_parallel_state(cfg)
    ffn = FeedForward(cfg.model, 1, state.tp, False, None)  # layer 1: structured
    initialize_piece(ffn, "blocks.1.ffn", SEED, 0.02, "paper")
    with torch.no_grad():
        ffn.fc1.bias.normal_(0, 0.1)
    tokens = 16 // 2 if sequence_parallel else 16  # SP: this rank's token shard
    x0 = torch.randn(2, tokens, cfg.model.hidden_size, generator=torch.Generator().manual_seed(state.rank))
    layer = ffn.fc1
    results = []
    for run in (layer, lambda x: layer.add_bias(layer.forward_unbiased(x))):  # the layer's own path, the add
        layer.zero_grad()
        x = x0.clone().requires_grad_()
        y = run(x)
        y.square().sum().backward()
        results.append([y.detach(), x.grad] + [p.grad.clone() for p in layer.parameters()])
    fused, separate = results
    worst = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in zip(fused, separate))
    with torch.no_grad():
        fused_here = layer.structure.forward_with_bias(x0, layer.bias) is not None
    return {"fused": fused_here, "max_rel_diff": worst,
            "bias_grad_nonzero": bool(fused[-1].abs().sum() > 0) if layer.bias is not None else False}


def layout_error(cfg) -> dict:
    created = []
    original = dist.new_group

    def counting_new_group(*args, **kwargs):
        created.append(1)
        return original(*args, **kwargs)

    dist.new_group = counting_new_group
    try:
        build_parallel_state(cfg)
        message = None
    except ConfigError as e:
        message = str(e)
    finally:
        dist.new_group = original
    return {"message": message, "groups_created": len(created)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    init_distributed()
    results = {"pipeline": {}, "traffic": {}, "errors": {}, "column_bias": {}}

    base = tiny_config("lowrank", tensor=1, pipe=1)
    untied = dataclasses.replace(base, model=dataclasses.replace(base.model, tie_embeddings=False, norm="rmsnorm",
                                                                 activation="swiglu", bias=False))
    for name, cfg in {"dense": tiny_config("dense"), "lowrank": base, "blockdense": tiny_config("blockdense"),
                      "blockshuffle": tiny_config("blockshuffle"), "lowrank_sgt": tiny_config("lowrank_sgt"),
                      "untied_swiglu_rmsnorm": untied}.items():
        results["pipeline"][name] = pipeline_matches_gpt(name, cfg)

    for kind in ("dense", "lowrank", "blockdense", "blockshuffle"):
        results["traffic"][kind] = ffn_traffic(kind, guided=False)
    results["traffic"]["lowrank_guided"] = ffn_traffic("lowrank", guided=True)
    for kind in ("dense", "lowrank", "blockdense", "blockshuffle"):
        for sp in (False, True):
            results["column_bias"][f"{kind}{'_sp' if sp else ''}"] = column_bias(kind, sp)

    bad = {
        "world_not_tensor_x_pipe_x_data": tiny_config("lowrank", tensor=2, pipe=2),
        "more_stages_than_blocks": dataclasses.replace(
            tiny_config("lowrank", tensor=1, pipe=2),
            model=dataclasses.replace(tiny_config("lowrank").model, num_layers=1)),
        "zero2_with_pipeline": tiny_config("lowrank", tensor=1, pipe=2, zero=2),
        "zero3_with_self_guided": tiny_config("lowrank_sgt", tensor=1, pipe=1, zero=3),
    }
    for name, cfg in bad.items():
        results["errors"][name] = layout_error(cfg)

    if dist.get_rank() == 0:
        torch.save(results, os.path.join(args.out, "model_checks.pt"))
    dist.barrier()


if __name__ == "__main__":
    main()
