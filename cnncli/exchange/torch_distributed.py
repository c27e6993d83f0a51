"""Data-parallel training on the torch engine: N processes, each computing a shard of every batch.

Every process holds the whole model and runs the same loop over the same
batches (the order and augmentation come from the seed). Process ``rank`` of
``world`` takes rows ``[k·rank/world, k·(rank+1)/world)`` of each batch of ``k``;
its loss gradient is scaled by ``k_rank/k`` and the gradients are summed
across processes (one ``all_reduce`` of all of them, flattened), which gives
every process the whole batch's mean gradient, so their optimizer steps and
weights stay identical. Batch norm normalises with each process's own shard
(PyTorch DDP's default; ``SyncBatchNorm`` does not run on CPUs), so a
batch-norm network differs slightly from the one-process run, and the running
statistics saved are process 0's. Process 0 (the lead) alone scores the
validation and test sets and writes the run folder; the others wait in the
next step's ``all_reduce``.

Launch: ``train --engine torch --nproc N`` starts N − 1 worker processes on
this machine (gloo on CPU; NCCL with ``--device cuda``, process i on GPU i; a free
local port) and is process 0 itself. On several machines, ``torchrun`` starts the processes and sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (the GPU), ``MASTER_ADDR`` and
``MASTER_PORT``; cnncli then joins that group (:func:`from_environment`). A process that dies ends the others'
collectives with an error; the lead then saves the state before the failed
step, which ``--resume`` continues.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

from cnncli.errors import UsageError, WorkerLost
from cnncli.exchange import torch_module

#: How long a collective waits for the others (the lead scores the validation set meanwhile).
TIMEOUT = timedelta(minutes=30)

#: torch.distributed's backend for each ``--device``.
BACKENDS = {"cpu": "gloo", "cuda": "nccl"}


@dataclass(frozen=True)
class Group:
    """This process's place in a data-parallel group."""

    rank: int
    world: int
    init: str                 # torch.distributed's init_method ("tcp://127.0.0.1:port" or "env://")
    backend: str = "gloo"     # BACKENDS[device]
    local_rank: int = 0       # this process's number on its machine: its GPU under --device cuda

    @property
    def lead(self) -> bool:
        return self.rank == 0

    def shard(self, k: int) -> slice:
        """This process's rows of a batch of ``k``."""
        return slice(k * self.rank // self.world, k * (self.rank + 1) // self.world)

    def join(self) -> None:
        dist = torch_module.require(torch_module.ENGINE).distributed
        if not dist.is_initialized():
            dist.init_process_group(self.backend, init_method=self.init, rank=self.rank, world_size=self.world,
                                    timeout=TIMEOUT)

    def leave(self) -> None:
        dist = torch_module.require(torch_module.ENGINE).distributed
        if dist.is_initialized():
            dist.destroy_process_group()

    def sum(self, tensor) -> None:
        """In-place sum across the group; a failure (another process gone) is :class:`WorkerLost`."""
        dist = torch_module.require(torch_module.ENGINE).distributed
        try:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        except (RuntimeError, ValueError) as e:  # gloo: "Connection closed by peer", timeouts, ...
            raise WorkerLost(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def from_environment(device: str = "cpu") -> Group | None:
    """The group ``torchrun`` (or any launcher of torch.distributed) set up, from its variables; else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise UsageError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (they are set by torchrun)") from None
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"RANK {rank} is not a process of WORLD_SIZE {world}")
    return Group(rank, world, "env://", BACKENDS[device], local) if world > 1 else None


def launch(config, reporter, train):
    """Train ``config`` in ``config.nproc`` processes on this machine with ``train`` (:func:`cnncli.commands.training.train`,
    passed in so that this module does not import training): workers 1..N−1 started here, this process
    process 0 (the lead, which reports and writes). Returns the lead's result."""
    import multiprocessing

    torch_module.require(torch_module.ENGINE)
    world = config.nproc
    init = f"tcp://127.0.0.1:{free_port()}"
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked threads or Numba state
    backend = BACKENDS[config.device]
    workers = [context.Process(target=train, args=(config, None, Group(rank, world, init, backend, rank)),
                               daemon=True, name=f"cnncli-worker-{rank}") for rank in range(1, world)]
    for w in workers:
        w.start()
    try:
        return train(config, reporter, group=Group(0, world, init, backend, 0))
    finally:
        for w in workers:
            w.join(timeout=60)
            if w.is_alive():
                w.terminate()
