"""Where each rank sits in the (pipe, data, tensor) grid, and the process groups of that grid.

Ranks are laid out by DeepSpeed's PipeModelDataParallelTopology with axes
(pipe, data, model): the tensor ("model") index varies fastest, so a tensor-parallel group
is made of consecutive ranks (one node's fast links), and pipeline stages are farthest
apart. The same topology object is handed to DeepSpeed's PipelineModule, so our groups
and DeepSpeed's grid agree on every coordinate.

Groups made here, each by every rank in the same order (new_group is collective):
  tensor     ranks of one stage of one replica         (the model's TensorParallel)
  data       ranks holding the same shard               (ZeRO, gradient averaging)
  pipe       the stages of one (data, tensor) fiber     (loss broadcast, full-state gather)
  model      pipe x tensor ranks of one replica         (gradient norm, mpu)
  embedding  first + last stage of one fiber            (tied embedding/head; DeepSpeed
             builds its own tied group for gradients, this one serves checkpoint tools)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch.distributed as dist

from ..config import Config, validate
from .ds_config import check_engine_support
from .launch import init_distributed  # noqa: F401  (re-exported: the loop imports both from here)
from .mappings import TensorParallel
from .mpu import GroupInfo, ModelParallelUnit

__all__ = ["ParallelState", "build_parallel_state", "init_distributed"]


@dataclass
class ParallelState:
    world_size: int
    rank: int
    tensor_size: int
    tensor_rank: int
    pipe_size: int
    pipe_rank: int
    data_size: int
    data_rank: int
    tp: TensorParallel
    tensor_group: object
    data_group: object
    pipe_group: object
    model_group: object
    embedding_group: object        # None on ranks of middle stages
    embedding_ranks: List[int]
    pipe_ranks: List[int]          # global ranks of this rank's pipeline, stage order
    topology: object
    mpu: ModelParallelUnit

    @property
    def is_first_stage(self) -> bool:
        return self.pipe_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pipe_rank == self.pipe_size - 1

    @property
    def is_logging_rank(self) -> bool:
        """Global rank 0. TrainEngine returns the global-batch loss on every rank (the
        pipeline broadcasts it from the last stage), so rank 0 sees it, and rank 0 also
        writes checkpoint metadata: one rank does all the talking."""
        return self.rank == 0

    def describe(self) -> str:
        return (f"rank {self.rank}/{self.world_size}: tensor {self.tensor_rank}/{self.tensor_size}, "
                f"pipe {self.pipe_rank}/{self.pipe_size}, data {self.data_rank}/{self.data_size}")


def _my_group(lists: List[List[int]], rank: int) -> GroupInfo:
    """Create one group per rank list (all ranks must call this) and return this rank's."""
    mine = None
    for ranks in lists:
        ranks = sorted(ranks)
        group = dist.new_group(ranks=ranks)
        if rank in ranks:
            mine = GroupInfo(group, ranks.index(rank), ranks)
    return mine


def build_parallel_state(cfg: Config) -> ParallelState:
    """Check the config against the world size (one ConfigError naming the field, before any
    group exists), then build the topology, the groups and the mpu. Needs init_distributed()."""
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    if not dist.is_initialized():
        raise RuntimeError("build_parallel_state needs torch.distributed: call init_distributed() first")
    world, rank = dist.get_world_size(), dist.get_rank()
    validate(cfg, world)  # layout (world = tensor x pipe x data, stages <= blocks, ZeRO with pipes) and shapes
    check_engine_support(cfg)
    tensor, pipe = cfg.parallel.tensor, cfg.parallel.pipeline
    data = world // (tensor * pipe)
    topo = PipeModelDataParallelTopology(num_pp=pipe, num_mp=tensor, num_dp=data)
    coord = topo.get_coord(rank)

    tensor_g = _my_group(topo.get_axis_comm_lists("model"), rank)
    data_g = _my_group(topo.get_axis_comm_lists("data"), rank)
    pipe_g = _my_group(topo.get_axis_comm_lists("pipe"), rank)
    model_g = _my_group([topo.filter_match(data=d) for d in range(data)], rank)
    embedding_lists = [sorted({p[0], p[-1]}) for p in topo.get_axis_comm_lists("pipe")]
    embedding_g = _my_group(embedding_lists, rank)

    tp = TensorParallel(tensor_g.group if tensor > 1 else None, tensor, coord.model,
                        sequence_parallel=cfg.parallel.sequence_parallel)
    mpu = ModelParallelUnit(topo, rank, tensor=tensor_g, data=data_g, pipe=pipe_g, model=model_g)
    return ParallelState(
        world_size=world, rank=rank, tensor_size=tensor, tensor_rank=coord.model, pipe_size=pipe,
        pipe_rank=coord.pipe, data_size=data, data_rank=coord.data, tp=tp, tensor_group=tensor_g.group,
        data_group=data_g.group, pipe_group=pipe_g.group, model_group=model_g.group,
        embedding_group=embedding_g.group if embedding_g else None,
        embedding_ranks=embedding_g.ranks if embedding_g else [], pipe_ranks=pipe_g.ranks,
        topology=topo, mpu=mpu)
