"""Worker (2 ranks, tensor 2): compiled tensor-parallel models against their eager selves.

For every FFN kind (and guided lowrank), with and without sequence parallelism, one model
runs eager and a copy runs with its blocks compiled (model/compile.py); both take the same
three micro-batches. Rank 0 writes <out>/compiled_tp.pt with "cases", per case: the largest relative
loss and gradient differences (this rank's shards and partial sums), the graph breaks
Dynamo reported, how many graphs it made, whether the graphs called the functional collectives
below autograd (compile_blocks sees to it, parallel/collectives.py): with the collectives traced into the graphs
(parallel/collectives.py) a block has no graph break, where before it broke at every one;
and "saved_bytes_sp": what one bf16 block keeps for backward under SP, eager and compiled.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

from megatron_sffn.model import GPTModel  # noqa: E402
from megatron_sffn.model.compile import compile_blocks  # noqa: E402
from megatron_sffn.parallel.collectives import traced_collectives_bypass_autograd  # noqa: E402
from megatron_sffn.parallel.topology import build_parallel_state, init_distributed  # noqa: E402
from megatron_sffn.structured.guide import GuideState  # noqa: E402
from tests.distributed.common import SEED, micro_batches, tiny_config  # noqa: E402

# every kind under sequence parallelism, two without (the collectives there are all-reduces)
CASES = [(kind, True) for kind in ("dense", "lowrank", "blockdense", "blockshuffle", "lowrank_sgt")] + \
        [("lowrank", False), ("lowrank_sgt", False)]
if os.environ.get("COMPILED_TP_CASES"):  # e.g. "lowrank_sgt:1", to look at one case
    CASES = [(k, v == "1") for k, v in (c.split(":") for c in os.environ["COMPILED_TP_CASES"].split(","))]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def compare(kind: str, sequence_parallel: bool) -> dict:
    cfg = tiny_config(kind, tensor=2, sequence_parallel=sequence_parallel)
    state = build_parallel_state(cfg)
    guided = cfg.self_guided.enabled
    models = []
    for _ in range(2):
        guide_state = GuideState(active=guided, seed=SEED, reduce_flop=False, alpha=0.5)
        models.append(GPTModel(cfg.model, state.tp, guided, guide_state).initialize(SEED))
    eager, compiled = models
    torch._dynamo.reset()
    counters.clear()
    compile_blocks(compiled)
    loss_diff = 0.0
    for ids, labels in list(micro_batches(0, 0, 1))[:3]:
        want, got = eager.loss(ids, labels), compiled.loss(ids, labels)
        want.backward()
        got.backward()
        loss_diff = max(loss_diff, abs(float(got) - float(want)) / abs(float(want)))
    grad_diff = max(relative(q.grad, p.grad) for p, q in zip(eager.parameters(), compiled.parameters()))
    return {"loss": loss_diff, "grad": grad_diff, "graph_breaks": sum(counters["graph_break"].values()),
            "break_reasons": sorted(counters["graph_break"]),
            "graphs": counters["stats"]["unique_graphs"],
            # compile_blocks makes the graphs call the collectives below autograd; the numbers above hold with it
            "collectives_below_autograd": traced_collectives_bypass_autograd()}


def saved_bytes(block, x) -> int:
    """Bytes of the distinct storages autograd keeps for one block's backward, parameters excluded."""
    kept = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x)
    params = {p.untyped_storage().data_ptr() for p in block.parameters()}
    return sum(n for ptr, n in kept.items() if ptr not in params)


def sequence_parallel_memory(kind: str) -> dict:
    """What one bf16 block keeps for backward under SP, eager and compiled: traced, the d-wide
    inputs' all-gathers must still be recomputed in backward, not kept whole."""
    from megatron_sffn.model.block import TransformerBlock
    cfg = tiny_config(kind, tensor=2, sequence_parallel=True)
    state = build_parallel_state(cfg)
    out = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        block = TransformerBlock(cfg.model, 1, state.tp, False, GuideState(active=False)).to(torch.bfloat16)
        x = torch.randn(2, cfg.model.seq_length // 2, cfg.model.hidden_size, dtype=torch.bfloat16,
                        requires_grad=True)
        if compiled:
            holder = torch.nn.ModuleList([block])
            compile_blocks(holder)
            block = holder[0]
            block(x)  # compiles
        out["compiled" if compiled else "eager"] = saved_bytes(block, x)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    init_distributed()
    results = {"cases": {(kind, sp): compare(kind, sp) for kind, sp in CASES},
               "saved_bytes_sp": {kind: sequence_parallel_memory(kind) for kind in ("dense", "lowrank")}}
    if dist.get_rank() == 0:
        torch.save(results, os.path.join(args.out, "compiled_tp.pt"))
    dist.barrier()


if __name__ == "__main__":
    main()
