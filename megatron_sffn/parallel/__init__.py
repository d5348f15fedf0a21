"""Tensor/pipeline/data parallel machinery: mappings, parallel cross-entropy, topology."""
from .mappings import (TensorParallel, copy_to_tensor_region, gather_from_tensor_region,
                       reduce_from_tensor_region, scatter_to_tensor_region)

__all__ = ["TensorParallel", "copy_to_tensor_region", "reduce_from_tensor_region",
           "scatter_to_tensor_region", "gather_from_tensor_region"]
