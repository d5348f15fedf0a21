"""One candidate layout, and how it maps onto config fields (the launcher's --override form)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import List


@dataclass(frozen=True)
class Layout:
    tensor: int
    pipeline: int
    data: int
    zero_stage: int
    micro_batch: int
    activation_checkpointing: bool
    sequence_parallel: bool
    cuda_graphs: bool = False   # compiled blocks replayed as CUDA graphs (training.cuda_graphs)

    @property
    def gpus(self) -> int:
        return self.tensor * self.pipeline * self.data

    def overrides(self, global_batch_size: int) -> List[str]:
        """--override strings that turn a config into this layout (data size = world / t / p)."""
        return [f"parallel.tensor={self.tensor}", f"parallel.pipeline={self.pipeline}",
                f"parallel.zero_stage={self.zero_stage}",
                f"parallel.sequence_parallel={str(self.sequence_parallel).lower()}",
                f"training.micro_batch_size={self.micro_batch}",
                f"training.global_batch_size={global_batch_size}",
                f"training.activation_checkpointing={str(self.activation_checkpointing).lower()}"] + (
                ["training.compile=true", "training.cuda_graphs=true"] if self.cuda_graphs else [])

    def short(self) -> str:
        """t2 p1 d2 z1 mb8 ckpt sp cg: the compact name used in tables."""
        parts = [f"t{self.tensor}", f"p{self.pipeline}", f"d{self.data}", f"z{self.zero_stage}",
                 f"mb{self.micro_batch}"]
        if self.activation_checkpointing:
            parts.append("ckpt")
        if self.sequence_parallel:
            parts.append("sp")
        if self.cuda_graphs:
            parts.append("cg")
        return " ".join(parts)

    def as_dict(self) -> dict:
        return asdict(self)
