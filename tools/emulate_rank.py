#!/usr/bin/env python
"""Run a training script as one rank of a larger world, alone, on one device.

Why: a rank's memory and its own compute depend only on the shapes it holds and the work
it schedules, not on its peers. torch's fake process group (backend "fake") gives this
process the rank and world size of a real N-GPU layout, so the model is built with that
rank's shards, the DeepSpeed engine with that rank's ZeRO partition and the pipeline with
that stage's layers. Every collective returns at once without moving data (an all-gather
copies the local shard into every slot; an all-reduce leaves its input as it is, a
reduce-scatter's output holds whatever its memory held), so:

  real: peak memory per GPU (without NCCL's own buffers), the rank's kernels and host path
  not real: the loss values (shards never meet), any time spent communicating or waiting

It answers "does layout X fit, and how much does sequence parallelism save" on one GPU, and
"what would this rank's step take if communication were free" (the gap to a real run is the
communication's cost). A later pipeline stage receives nothing from its predecessor, not
even the shape DeepSpeed sends first: the pipeline module's boundary_shape gives it.

    python tools/emulate_rank.py --world 4 [--rank 0] -- launchers/pretrain.py --config C ...
    python benchmarks/bench_train.py --nproc 4 --emulate ...      # the same, per benchmark case

Each all-gather and reduce-scatter traced into the compiled blocks (torch's functional
collectives: the compiled tensor-parallel path) is one kernel, as an NCCL call is, in place of
the fake group's (one copy per slot for an all-gather, none for a reduce-scatter): see
collectives_as_one_kernel; --collectives torch keeps torch's. Eager calls keep the fake
group's behaviour.
"""
from __future__ import annotations

import argparse
import os
import runpy
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

COLLECTIVES = ("one-kernel", "torch")  # --collectives: collectives_as_one_kernel, or the fake group's own
DEFAULT_COLLECTIVES = COLLECTIVES[0]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 usage="%(prog)s --world N [--rank R] -- SCRIPT [ARGS ...]")
    ap.add_argument("--world", type=int, required=True, help="world size of the emulated layout")
    ap.add_argument("--rank", type=int, default=0, help="which global rank this process is (default 0)")
    ap.add_argument("--collectives", choices=COLLECTIVES, default=DEFAULT_COLLECTIVES,
                    help="one-kernel (default): each traced all-gather and reduce-scatter one kernel, as a real "
                         "NCCL call; torch: the fake group's collectives as torch makes them")
    ap.add_argument("script", help="the Python script to run as that rank (e.g. launchers/pretrain.py)")
    ap.add_argument("script_args", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    if args.world < 1:
        ap.error(f"--world must be >= 1, got {args.world}")
    if not 0 <= args.rank < args.world:
        ap.error(f"--rank must be in [0, {args.world}), got {args.rank}")
    if not os.path.isfile(args.script):
        ap.error(f"script {args.script!r} does not exist")
    if args.script_args[:1] == ["--"]:
        args.script_args = args.script_args[1:]
    return args


_one_kernel_library = []  # the torch.library registration; its kernels last as long as this reference


def collectives_as_one_kernel() -> None:
    """The traced all-gathers and reduce-scatters on this process's devices, one kernel each.

    Why: a real rank's NCCL call is one kernel (~36-40 us of host a call on an H100,
    bench_emulated_collectives.py). torch's fake group makes an N-rank all-gather N device
    copies, each dispatched and launched (8,000 a TP4 SP step), and a reduce-scatter nothing.
    Here an all-gather is one broadcast copy into its output and a reduce-scatter one copy of
    the first chunk: one launch each, ~31-41 us of host, the output's bytes written (the values
    mean nothing either way). Process-wide, for the process's lifetime; idempotent.
    """
    if _one_kernel_library:
        return
    import warnings

    import torch
    import torch.distributed._functional_collectives  # noqa: F401  (registers the ops)

    def all_gather_out(inp, group_size, group_name, *, out):
        out.view(group_size, *inp.shape).copy_(inp.unsqueeze(0).expand(group_size, *inp.shape))
        return out

    def all_gather(inp, group_size, group_name):
        out = inp.new_empty((group_size * inp.shape[0], *inp.shape[1:]))
        return all_gather_out(inp, group_size, group_name, out=out)

    def reduce_scatter_out(inp, reduce_op, group_size, group_name, *, out):
        return out.copy_(inp.narrow(0, 0, inp.shape[0] // group_size))

    def reduce_scatter(inp, reduce_op, group_size, group_name):
        return inp.narrow(0, 0, inp.shape[0] // group_size).clone()

    library = torch.library.Library("_c10d_functional", "IMPL")
    kernels = {"all_gather_into_tensor": all_gather, "all_gather_into_tensor_out": all_gather_out,
               "reduce_scatter_tensor": reduce_scatter, "reduce_scatter_tensor_out": reduce_scatter_out}
    with warnings.catch_warnings():  # "Overriding a previously registered kernel": that is the point
        warnings.simplefilter("ignore")
        for op, kernel in kernels.items():
            for device in ("CPU", "CUDA"):
                library.impl(op, kernel, device)
    _one_kernel_library.append(library)


def replicate_local_object(object_list, obj, group=None):
    """all_gather_object on the fake group: every rank is assumed to hold what this one does
    (the fake group moves no bytes, so torch's own version unpickles empty buffers)."""
    for i in range(len(object_list)):
        object_list[i] = obj


def fake_backend_groups(new_group):
    """new_group that ignores a requested backend: a side group (e.g. the gloo group the
    stop-request check uses) must be fake too, as nothing else can form with absent peers."""
    def new_fake_group(*args, **kwargs):
        kwargs.pop("backend", None)
        return new_group(*args, **kwargs)
    return new_fake_group


def partition_layout_from_own_output() -> None:
    """DeepSpeed's pipeline partitions activations across the tensor group when tensor
    parallelism runs without sequence parallelism, and the next stage sends the gradient
    back partitioned, its layout (a small integer tensor) first. Faked, that layout arrives
    as zeros; it is the layout of the stage's own output, so that one is used."""
    from deepspeed.runtime.utils import PartitionedTensor

    own = {}
    to_meta, from_meta = PartitionedTensor.to_meta, PartitionedTensor.from_meta.__func__

    def remembering_to_meta(self):
        own["meta"] = to_meta(self)
        return own["meta"]

    def filled_from_meta(cls, meta, local_part, group, **kwargs):
        if "meta" in own and not meta.any():
            meta = own["meta"].to(meta.device)
        return from_meta(cls, meta, local_part, group, **kwargs)

    PartitionedTensor.to_meta = remembering_to_meta
    PartitionedTensor.from_meta = classmethod(filled_from_meta)


def stage_inputs_from_the_model() -> None:
    """A later pipeline stage first receives the shape of its input from the stage before,
    which nobody sends here: the module says what crosses a boundary (its boundary_shape),
    in its parameters' dtype; partitioned as DeepSpeed partitions it where it does (tensor
    parallelism without sequence parallelism: the layout, then this rank's flat part)."""
    import torch
    from deepspeed.runtime.pipe.engine import PipelineEngine
    from deepspeed.runtime.utils import PartitionedTensor

    def emulated_recv_tensor_meta(self, send_stage):
        shape_of = getattr(self.module, "boundary_shape", None)
        if shape_of is None:
            raise RuntimeError("emulate_rank: only the first pipeline stage of a module without "
                               "boundary_shape(micro_batch) can be emulated")
        shape = shape_of(self.micro_batch_size)
        dtype = next(self.module.parameters()).dtype
        if not self.is_pipe_partitioned:
            return self._allocate_or_extend_buffers(0, list(shape), dtype)
        part = PartitionedTensor(tensor=torch.zeros(shape, dtype=dtype, device=self.device),
                                 group=self.grid.get_slice_parallel_group())
        sent = (part.to_meta(), part.data())  # to_meta: the layout a faked receive falls back to
        return tuple(self._allocate_or_extend_buffers(i, list(t.shape), t.dtype) for i, t in enumerate(sent))

    PipelineEngine._recv_tensor_meta = emulated_recv_tensor_meta


def this_rank_does_rank_zeros_part() -> None:
    """Rank 0 alone writes the run's log and metrics, reports a start-up problem and builds the
    sample indices while the others wait: alone, the emulated rank does all of that, whichever
    rank it is (which samples it reads still follows its data-parallel rank)."""
    from megatron_sffn.parallel.topology import ParallelState
    from megatron_sffn.training import agree, data_feed

    ParallelState.is_logging_rank = property(lambda self: True)
    report_init = agree.StartupError.__init__
    agree.StartupError.__init__ = lambda self, message, report=True: report_init(self, message, True)
    open_data = data_feed.open_training_data
    data_feed.open_training_data = lambda cfg, rank, *args, **kwargs: open_data(cfg, 0, *args, **kwargs)


def init_fake_group(world: int, rank: int = 0, collectives: str = DEFAULT_COLLECTIVES) -> None:
    """This process's default process group: `rank` of `world` on torch's fake group, its
    traced collectives "one-kernel" (collectives_as_one_kernel) or "torch" (the fake group's own)."""
    if collectives not in COLLECTIVES:
        raise ValueError(f"collectives must be one of {COLLECTIVES}, got {collectives!r}")
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", rank=rank, world_size=world, store=FakeStore())
    if collectives == "one-kernel":
        collectives_as_one_kernel()


def join_fake_world(world: int, rank: int, collectives: str = DEFAULT_COLLECTIVES) -> None:
    """The default process group for `rank` of `world`, faked (init_fake_group); the launcher's
    init then finds it and goes on as under deepspeed/torchrun (LOCAL_RANK 0: this process's
    one device)."""
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0", LOCAL_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29500"))
    init_fake_group(world, rank, collectives)
    dist.all_gather_object = replicate_local_object
    dist.new_group = fake_backend_groups(dist.new_group)
    from megatron_sffn.parallel.jit_cache import use_installation_extensions_dir
    use_installation_extensions_dir()  # as the launcher: DeepSpeed's JIT ops in this installation's folder
    import deepspeed  # its comm layer wraps the group that exists (the pipeline module asks it first)
    deepspeed.init_distributed(verbose=False)
    partition_layout_from_own_output()
    stage_inputs_from_the_model()
    this_rank_does_rank_zeros_part()


def main(argv=None) -> None:
    args = parse_args(argv)
    join_fake_world(args.world, args.rank, args.collectives)
    print(f"[emulate_rank] rank {args.rank} of {args.world} on torch's fake process group: memory and "
          "this rank's compute are real; losses and communication are not"
          + ("; torch's fake collectives" if args.collectives == "torch" else ""), flush=True)
    sys.argv = [args.script] + args.script_args
    sys.path.insert(0, os.path.dirname(os.path.abspath(args.script)))
    runpy.run_path(args.script, run_name="__main__")


if __name__ == "__main__":
    main()
