"""Where training runs: the device, and torchrun's processes (`Distributed`) or a single one (`SingleProcess`)."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass

import torch

log = logging.getLogger("training")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def own_gpu(local_rank: int) -> int:
    """The GPU a torchrun process trains on: its local rank. NCCL cannot put two ranks on one GPU, so more
    processes per node than GPUs is refused here, with the way out, rather than deep inside NCCL."""
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise RuntimeError(f"torchrun process {local_rank} on this node has no GPU of its own ({count} visible): "
                           "start as many processes per node as GPUs (--nproc_per_node), or train on the CPU "
                           "(--device cpu)")
    return local_rank


class Distributed:
    """torchrun's environment, or a single process."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.enabled = self.world > 1
        self.device = device
        if self.enabled:
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                self.device = torch.device("cuda", own_gpu(int(os.environ.get("LOCAL_RANK", "0"))))
                torch.cuda.set_device(self.device)
            torch.distributed.init_process_group(backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def broadcast_weights(self, module: torch.nn.Module) -> None:
        """Rank 0's weights to every rank."""
        if self.enabled:
            for tensor in module.state_dict().values():
                torch.distributed.broadcast(tensor, 0)

    def share(self, count: int) -> float:
        """world x this rank's fraction of `count` summed over ranks (1.0 in a single process)."""
        if not self.enabled:
            return 1.0
        total = torch.tensor([float(count)], device=self.device)
        torch.distributed.all_reduce(total)
        return self.world * count / max(float(total), 1.0)

    def check_in_sync(self, module: torch.nn.Module, label: str) -> str:
        """A digest of `module`'s weights, logged per rank and compared across ranks: DDP replicas must stay
        bit-identical, and one that drifted (an unsynchronised buffer, a rank-dependent step) stops the run."""
        if not self.enabled:
            return ""
        digest = hashlib.sha256()
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        text = digest.hexdigest()[:15]
        log.info("rank %d %s weights %s", self.rank, label, text)
        mine = torch.tensor([int(text, 16)], dtype=torch.long, device=self.device)
        every = [torch.zeros_like(mine) for _ in range(self.world)]
        torch.distributed.all_gather(every, mine)
        if len({int(t) for t in every}) > 1:
            raise RuntimeError(f"{label}: ranks hold different weights ({[f'{int(t):015x}' for t in every]})")
        return text


@dataclass(frozen=True)
class SingleProcess:
    """`Distributed` for one process on the CPU: what tools that only read the data pass in."""

    device: torch.device = torch.device("cpu")
    enabled: bool = False
    main: bool = True

    def barrier(self) -> None:
        pass
