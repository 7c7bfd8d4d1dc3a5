"""Data-parallel training on PyTorch's own engine: DDP, launched by `torchrun`.

`torchrun --standalone --nproc_per_node=N -m cmift task=...` trains one run on N ranks. Every
rank draws the same global batches from the same seeded generator and trains on its shard of
each (`indices[rank::N]`), weighting its loss by its share, so the gradient DDP averages is the
gradient of the global batch: `train.batch_size` is the global batch on 1 or N ranks, and exact
resume holds. Evaluation and the objectives' no-grad passes are sharded by batch and gathered
(every example counted once); class centroids are fit and updated from all-reduced class sums
and counts, so every rank holds the same ones. Rank 0 writes the run directory; the others
write nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cmift.lazy import LazyModule, torch

dist = LazyModule("torch.distributed")  # torch-free until used: the config path imports this


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1

    def shard(self, items: list) -> list:
        return items[self.rank::self.world]

    def sum_(self, tensor):
        """In place: the sum over ranks (a no-op on one rank)."""
        if self.parallel:
            dist.all_reduce(tensor)
        return tensor

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order (on every rank)."""
        if not self.parallel:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if not self.parallel:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.parallel:
            dist.barrier()


RANKS = Ranks()  # this process's place; set by `start` under torchrun


def launched() -> int:
    """The number of ranks this run has: torchrun's WORLD_SIZE, or the tasks of a submitit job
    (Hydra's submitit launcher with `tasks_per_node` / `nodes`: one job = one data-parallel
    run), whose rank variables are then exported for torch; 1 otherwise."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    if os.environ.get("SUBMITIT_EXECUTOR"):
        import submitit
        from submitit.helpers import TorchDistributedEnvironment

        if submitit.JobEnvironment().num_tasks > 1:
            # the device comes from LOCAL_RANK (start), so CUDA_VISIBLE_DEVICES stays whole
            TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            return int(os.environ["WORLD_SIZE"])
    return 1


def start() -> Ranks:
    """Join the process group torchrun set up (gloo on CPU, NCCL on GPUs); idempotent."""
    if launched() > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available()
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
        # in place: modules hold this object
        RANKS.rank, RANKS.world, RANKS.local_rank = dist.get_rank(), dist.get_world_size(), local
    return RANKS


def wrap(model):
    """DDP around the model on more than one rank. Buffers are not broadcast on each forward:
    evaluation shards run different numbers of forwards per rank, and the encoders' buffers
    (position ids) never change."""
    if not RANKS.parallel:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [RANKS.local_rank] if torch.cuda.is_available() else None
    return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)
