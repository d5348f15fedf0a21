"""The `mpu` ("model parallel unit") object DeepSpeed asks for process groups.

deepspeed.initialize(mpu=...) uses it to partition ZeRO state over the data-parallel group,
to reduce gradient norms over the model-parallel group (pipeline x tensor ranks of one
replica) and to count replicated parameters once (only tensor rank 0 adds parameters
without `tensor_model_parallel`). The names follow the Megatron/DeepSpeed conventions,
including the older aliases (`slice`, `pipeline_model`) DeepSpeed still calls.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List


@dataclass(frozen=True)
class GroupInfo:
    """One process group seen from this rank: the handle, this rank's index, its members."""
    group: object
    rank: int
    ranks: List[int]

    @property
    def size(self) -> int:
        return len(self.ranks)


class ModelParallelUnit:
    def __init__(self, topology, global_rank: int, tensor: GroupInfo, data: GroupInfo, pipe: GroupInfo,
                 model: GroupInfo):
        self._topology, self._global_rank = topology, global_rank
        self._tensor, self._data, self._pipe, self._model = tensor, data, pipe, model

    def topology(self):
        return self._topology

    def get_global_rank(self) -> int:
        return self._global_rank

    # -- data parallel: ZeRO partitions and gradient averaging --------------------------
    def get_data_parallel_rank(self) -> int:
        return self._data.rank

    def get_data_parallel_world_size(self) -> int:
        return self._data.size

    def get_data_parallel_group(self):
        return self._data.group

    def get_data_parallel_group_ranks(self) -> List[int]:
        return list(self._data.ranks)

    # -- tensor parallel (Megatron "tensor model parallel", DeepSpeed "slice") ------------
    def get_tensor_model_parallel_rank(self) -> int:
        return self._tensor.rank

    def get_tensor_model_parallel_world_size(self) -> int:
        return self._tensor.size

    def get_tensor_model_parallel_group(self):
        return self._tensor.group

    def get_tensor_model_parallel_src_rank(self) -> int:
        return self._tensor.ranks[0]

    get_slice_parallel_rank = get_tensor_model_parallel_rank
    get_slice_parallel_world_size = get_tensor_model_parallel_world_size
    get_slice_parallel_group = get_tensor_model_parallel_group

    # -- pipeline parallel ----------------------------------------------------------------
    def get_pipe_parallel_rank(self) -> int:
        return self._pipe.rank

    def get_pipe_parallel_world_size(self) -> int:
        return self._pipe.size

    def get_pipe_parallel_group(self):
        return self._pipe.group

    get_pipeline_model_parallel_rank = get_pipe_parallel_rank
    get_pipeline_model_parallel_world_size = get_pipe_parallel_world_size
    get_pipeline_model_parallel_group = get_pipe_parallel_group

    # -- model parallel: every rank holding a piece of one model replica ------------------
    def get_model_parallel_rank(self) -> int:
        return self._model.rank

    def get_model_parallel_world_size(self) -> int:
        return self._model.size

    def get_model_parallel_group(self):
        return self._model.group

    def __repr__(self) -> str:
        return (f"ModelParallelUnit(rank={self._global_rank}, tensor={self._tensor.rank}/{self._tensor.size}, "
                f"pipe={self._pipe.rank}/{self._pipe.size}, data={self._data.rank}/{self._data.size})")
