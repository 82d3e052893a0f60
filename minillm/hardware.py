"""The hardware a run lands on: which precision it computes in, how fast the device can go, and
where this process sits among several (data parallelism under ``torchrun``), and keeping the
caller's random state when a library call must reseed.

Nothing here assumes a GPU: on a CPU the precision is float32, the peak is unknown and the run
is one process; on a GPU bf16 autocast switches on, MFU can be measured, and ``torchrun``
launches one process per GPU that the training engine (``minillm.train``) wraps in
DistributedDataParallel.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch

AUTOCAST_DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16,
                   "float16": torch.float16}


# Dense bf16/fp16 tensor-core peaks from the vendors' data sheets, in FLOP/s. MFU (model FLOPs
# utilisation, PaLM appendix B) is achieved model FLOP/s over this peak; on a CPU there is no
# one agreed peak, so only the achieved FLOP/s is reported.
PEAK_FLOPS = {"H100": 989e12, "A100": 312e12, "L4": 121e12, "V100": 125e12, "T4": 65e12}


def peak_flops(device: str) -> float | None:
    """The device's known peak FLOP/s, or None (CPU, MPS, or a GPU not in PEAK_FLOPS)."""
    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((peak for key, peak in PEAK_FLOPS.items() if key in name), None)


def autocast_dtype(device: str, dtype: str = "auto") -> torch.dtype:
    """The dtype the forward pass computes in. "auto" is bfloat16 on a GPU that supports it
    (same range as float32, so no loss scaling; twice the tensor-core speed, half the memory
    traffic) and float32 elsewhere: CPUs rarely have fast bf16 matmuls."""
    if dtype != "auto":
        return AUTOCAST_DTYPES[dtype]
    if torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


@dataclass
class Distributed:
    """Where this process sits in a torchrun launch (rank 0 of 1 when run alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_main_process() -> bool:
    """Whether this process is the one that prints and saves: rank 0 of a torchrun launch (once
    ``train`` has joined its process group), or a process run alone."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def init_distributed(device: str) -> Distributed:
    """Join the process group torchrun set up (gloo on a CPU, nccl on CUDA), if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        # Left to the interpreter's teardown, the group's threads can be destroyed while still
        # running, and the process aborts ("terminate called without an active exception").
        atexit.register(dist.destroy_process_group)
    return Distributed(dist.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def callers_rng_kept(device: str):
    """A context in which torch's global random state may be reseeded: the caller's state
    (CPU, and the GPU's where one is used) comes back afterwards, as a library call should."""
    kind = torch.device(device).type
    if kind in ("cuda", "mps"):
        return torch.random.fork_rng(device_type=kind)
    return torch.random.fork_rng(devices=[])


def wrap_for_training(model, compile: bool, dist: Distributed, device: str):
    """The module the training steps call: compiled and/or wrapped for data parallelism."""
    stepper = torch.compile(model) if compile else model
    if dist.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [dist.local_rank] if torch.device(device).type == "cuda" else None
        stepper = DistributedDataParallel(stepper, device_ids=ids)
    return stepper


def mean_across(value: float, dist: Distributed, device: str) -> float:
    """The mean of ``value`` over all processes (each saw a different slice of the batch)."""
    if dist.world_size == 1:
        return value
    import torch.distributed as tdist

    tensor = torch.tensor([value], device=device)
    tdist.all_reduce(tensor)
    return tensor.item() / dist.world_size
