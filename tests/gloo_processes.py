"""Run a test's function on several CPU processes joined by gloo, as a multi-device run
would be: ``function(rank, world, out_dir)`` runs in every process, which then waits for the
others and tears the process group down safely."""

from __future__ import annotations

import gc
import os
import socket
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port no one listens on now, for the processes' rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _process(rank: int, function: Callable[[int, int, str], None], world: int, port: int,
             out_dir: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        function(rank, world, out_dir)
        dist.barrier()  # neither process tears gloo down while the other still talks to it
    finally:
        # Free any DDP reducer or autograd cycle before the process group goes: a gloo work
        # object that outlives it into interpreter exit aborts the process ("terminate called
        # without an active exception").
        gc.collect()
        dist.destroy_process_group()


def run_on_processes(function: Callable[[int, int, str], None], out_dir: str,
                     world: int = 2) -> None:
    """Run ``function(rank, world, out_dir)`` (a module-level function, so the processes can
    import it) on ``world`` gloo processes and wait for all of them."""
    mp.spawn(_process, args=(function, world, free_port(), str(out_dir)), nprocs=world,
             join=True)
