"""The hardware a run lands on: which precision it computes in, how fast the device can go, and
where this process sits among several (data parallelism under ``torchrun``), and keeping the
caller's random state when a library call must reseed.

Nothing here assumes a GPU: on a CPU the precision is float32, the peak is unknown and the run
is one process; on a GPU bf16 autocast switches on, MFU can be measured, and ``torchrun``
launches one process per GPU that the training engine (``minillm.train``) wraps in
DistributedDataParallel (every process holds the whole model and optimizer) or shards with FSDP
(each holds 1/N of the parameters, gradients and optimizer state, and gathers a block's
parameters only while it computes with them).
"""

from __future__ import annotations

import atexit
import contextlib
import os
from dataclasses import dataclass

import torch

AUTOCAST_DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16,
                   "float16": torch.float16}


# Dense bf16/fp16 tensor-core peaks from the vendors' data sheets, in FLOP/s. MFU (model FLOPs
# utilisation, PaLM appendix B) is achieved model FLOP/s over this peak; on a CPU there is no
# one agreed peak, so only the achieved FLOP/s is reported.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "V100": 125e12,
              "T4": 65e12}


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


def launched_by_torchrun() -> bool:
    """Whether this process is one of a ``torchrun`` launch (which sets its rank in the
    environment), even a launch of one process."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: str, group_of_one: bool = False) -> Distributed:
    """Join the process group torchrun set up (gloo on a CPU, nccl on CUDA), if any.

    A launch of one process joins none, unless ``group_of_one``: FSDP shards over a process
    group, even one of a single GPU (where it still brings its mixed precision).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1 and not (group_of_one and launched_by_torchrun()):
        return Distributed()
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        if backend == "nccl":  # this process's GPU, which NCCL and FSDP's sharding use
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        # Left to the interpreter's teardown, the group's threads can be destroyed while still
        # running, and the process aborts ("terminate called without an active exception").
        atexit.register(dist.destroy_process_group)
    return Distributed(dist.get_rank(), world_size, local_rank)


def callers_rng_kept(device: str):
    """A context in which torch's global random state may be reseeded: the caller's state
    (CPU, and the GPU's where one is used) comes back afterwards, as a library call should."""
    kind = torch.device(device).type
    if kind in ("cuda", "mps"):
        return torch.random.fork_rng(device_type=kind)
    return torch.random.fork_rng(devices=[])


def wrap_for_training(model, compile: bool, dist: Distributed, device: str, fsdp: bool = False,
                      dtype: torch.dtype = torch.float32):
    """The module the training steps call: compiled and/or wrapped for data parallelism.

    With ``fsdp`` the model is sharded in place (``shard``) before it is compiled, so an
    optimizer must be made after this call, over the sharded parameters. Otherwise several
    processes get DistributedDataParallel, which leaves the model's own parameters as they are.
    """
    if fsdp:
        shard(model, dtype)
        return torch.compile(model) if compile else model
    stepper = torch.compile(model) if compile else model
    if dist.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [dist.local_rank] if torch.device(device).type == "cuda" else None
        stepper = DistributedDataParallel(stepper, device_ids=ids)
    return stepper


def shard(model, dtype: torch.dtype = torch.float32) -> None:
    """Shard a GPT in place across the process group with PyTorch's FSDP (``fully_shard``):
    each transformer block, then the rest (embeddings, final norm, output layer) at the root.

    Every parameter becomes a DTensor of which this process keeps one slice along the first
    dimension (1/N of it, N processes), and its gradient and AdamW's two averages follow the
    same slices. A block's whole parameters exist only while it runs: gathered (all-gather)
    just before its forward or backward pass and freed after, while the gradients are averaged
    and split back into slices (reduce-scatter). Sharding block by block keeps the gathered
    part to about one block at a time, and lets the gathering of the next block overlap the
    computing of this one. On bf16 hardware the gathered copies are bfloat16 (half the bytes to
    send and hold) while the slices, the optimizer and the gradient averaging stay float32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy()
    if dtype == torch.bfloat16:  # bf16 needs no loss scaling; float16 would (so it is left out)
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


def reshard(model) -> None:
    """Free the whole parameters a sharded model still holds, keeping only its slices.

    FSDP frees a block's gathered parameters after its backward pass, but the root's (the
    embeddings, which the next step needs first) stay gathered after a forward pass without
    backward, such as an evaluation's. A model that is not sharded is left as it is.
    """
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def gradient_sync(stepper, sync: bool):
    """A context for the backward pass of one micro-batch: with ``sync`` (the last micro-batch
    of a step) the gradients are averaged across processes as usual; without it they only
    accumulate on this process, sparing a communication whose result the next micro-batch
    would change anyway. A module run alone has nothing to synchronise."""
    if hasattr(stepper, "set_requires_gradient_sync"):  # FSDP: a switch, not a context
        stepper.set_requires_gradient_sync(sync)
    elif not sync and hasattr(stepper, "no_sync"):  # DistributedDataParallel
        return stepper.no_sync()
    return contextlib.nullcontext()


def memory_held(model, optimizer) -> dict[str, int]:
    """The bytes of the parameters, the gradients and the optimizer state this process holds.

    Measured on the tensors themselves: under FSDP each is a DTensor and only its local slice
    counts; under DDP, or alone, every tensor is whole. A parameter shared by two layers (a tied
    embedding) counts once.

    Example: a one-layer GPT (n_embd=32, vocab_size=20, block_size=16) has 13,920 parameters (55,680
    bytes in float32); after one AdamW step it holds as many bytes of gradients and twice as
    many of optimizer state (two averages per parameter), plus a small step counter per tensor.
    """
    def local_bytes(tensors) -> int:
        total = 0
        for t in tensors:
            t = t.to_local() if hasattr(t, "to_local") else t
            total += t.numel() * t.element_size()
        return total

    parameters = list(model.parameters())
    return {"parameters": local_bytes(parameters),
            "gradients": local_bytes(p.grad for p in parameters if p.grad is not None),
            "optimizer": local_bytes(value for state in optimizer.state.values()
                                     for value in state.values() if torch.is_tensor(value))}


def mean_across(value: float, dist: Distributed, device: str) -> float:
    """The mean of ``value`` over all processes (each saw a different slice of the batch)."""
    if dist.world_size == 1:
        return value
    import torch.distributed as tdist

    tensor = torch.tensor([value], device=device)
    tdist.all_reduce(tensor)
    return tensor.item() / dist.world_size


def gather_across(value, dist: Distributed) -> list:
    """Every process's ``value`` (any picklable data), in rank order, on every process."""
    if dist.world_size == 1:
        return [value]
    import torch.distributed as tdist

    values = [None] * dist.world_size
    tdist.all_gather_object(values, value)
    return values
