"""Tensor/pipeline/data parallel machinery.

mappings        collective autograd ops at the tensor-parallel region's edges
cross_entropy   vocab-parallel cross-entropy
launch          init_distributed: deepspeed / torchrun / mpirun / plain python, gloo or NCCL
topology        ParallelState: ranks -> (pipe, data, tensor), process groups, the mpu
mpu             the model-parallel-unit object deepspeed.initialize asks for groups
ds_config       the DeepSpeed config derived from ours; combinations refused up front
full_state      full tensors from tensor/pipeline shards (tests, checkpoint tools)
"""
from .mappings import (TensorParallel, copy_to_tensor_region, gather_from_tensor_region,
                       reduce_from_tensor_region, scatter_to_tensor_region)

__all__ = ["TensorParallel", "copy_to_tensor_region", "reduce_from_tensor_region",
           "scatter_to_tensor_region", "gather_from_tensor_region"]
