"""One training run over several processes: PyTorch DistributedDataParallel (DDP) launched by ``torchrun``.

``sampref_train ... --num-gpus N`` (N > 1) starts ``python -m torch.distributed.run --standalone --nproc_per_node N
-m sampref_bench.cli.train <the same arguments>`` (:func:`torchrun_command`); each of the N processes finds
``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` in its environment and joins the process group (:func:`init_from_env`:
``nccl`` on CUDA, each rank on ``cuda:LOCAL_RANK``; ``gloo`` on the CPU).

Semantics (what :class:`~sampref_bench.trainers.base.BaseTrainer` does when the group has more than one process):

- the **global batch is the planned batch**: every rank builds the same global batch of ``B`` items (data loading
  and augmentation are *not* split: each item is seeded by the run's seed and its address, so every rank loads the
  identical batch) and keeps its contiguous shard, items ``[r * B / W, (r + 1) * B / W)`` of rank ``r`` of ``W``
  (:func:`shard_batch`); ``B`` must be divisible by ``W``;
- DDP averages the gradients of the per-rank losses; for a loss that is a mean over items (equal shard sizes) the
  update is the single-process update up to float rounding;
- step metrics are averaged over ranks (:func:`mean_metrics`), so the log holds the global mean loss;
- every rank is seeded identically; only rank 0 writes files (config, log, plot, checkpoints, validation), and the
  others wait at a barrier until it has finished. Checkpoints store the unwrapped modules (no ``module.`` prefix).

Outside a process group (every ordinary run) every helper is a no-op: world size 1, rank 0.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from sampref_bench.utilities.errors import SamprefError

#: How long a rank waits in a collective (a barrier while rank 0 runs the final validation, for one) before giving
#: up. Generous: rank 0 may validate many cases while the others wait.
TIMEOUT = timedelta(hours=2)


def launched_by_torchrun() -> bool:
    """True in a process started by ``torchrun`` (``WORLD_SIZE`` and ``LOCAL_RANK`` are in the environment)."""
    return "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def is_active() -> bool:
    """True when a ``torch.distributed`` process group is initialized in this process."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes in the group (1 without a group)."""
    return dist.get_world_size() if is_active() else 1


def rank() -> int:
    """This process's global rank (0 without a group)."""
    return dist.get_rank() if is_active() else 0


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``; 0 without torchrun): the index of its GPU."""
    return int(os.environ.get("LOCAL_RANK", "0")) if is_active() else 0


def is_main() -> bool:
    """True on rank 0, the only rank that writes files (and in every single-process run)."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """``device`` as this rank uses it: ``cuda:LOCAL_RANK`` for ``cuda`` inside a group, otherwise unchanged."""
    if device.type == "cuda" and device.index is None and is_active():
        return torch.device("cuda", local_rank())
    return device


def resolve_device(name: str) -> torch.device:
    """``cpu`` or ``cuda`` (a clear error when CUDA is asked for but absent)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SamprefError("--device cuda was given but no CUDA GPU is visible; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise SamprefError(f"--device must be cpu or cuda, got {name!r}")
    return local_device(torch.device(name))


def torchrun_command(num_processes: int, argv: list[str]) -> list[str]:
    """The command that runs ``sampref_train argv`` as ``num_processes`` processes on this machine through torchrun
    (``--standalone``: a free local rendezvous port, so several such runs may share a machine)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(num_processes),
            "-m", "sampref_bench.cli.train", *argv]


def init_from_env(device: str, expected_world_size: int | None = None) -> None:
    """Join the process group torchrun described in the environment: ``nccl`` for ``device == "cuda"`` (after
    selecting ``cuda:LOCAL_RANK``), ``gloo`` for ``"cpu"``. ``expected_world_size`` (``--num-gpus``), when given,
    must equal torchrun's ``WORLD_SIZE``."""
    size = int(os.environ["WORLD_SIZE"])
    if expected_world_size is not None and expected_world_size != size:
        raise SamprefError(f"--num-gpus {expected_world_size} was given, but torchrun started {size} processes "
                           "(WORLD_SIZE); give the same number, or leave --num-gpus out under torchrun")
    if is_active():
        return
    if device == "cuda":
        if not torch.cuda.is_available() or torch.cuda.device_count() <= int(os.environ["LOCAL_RANK"]):
            raise SamprefError(f"rank with LOCAL_RANK {os.environ['LOCAL_RANK']} has no CUDA GPU of that index "
                               f"({torch.cuda.device_count()} visible); use fewer processes or --device cpu")
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl", timeout=TIMEOUT)
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)


def teardown() -> None:
    """Leave the process group (nothing without one)."""
    if is_active():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank arrives here (nothing without a group)."""
    if world_size() > 1:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[local_rank()])
        else:
            dist.barrier()


def check_divisible(batch_size: int, world: int, what: str = "the batch") -> int:
    """Items per rank of a global batch of ``batch_size`` items over ``world`` ranks; a :class:`SamprefError` when
    they do not divide evenly (unequal shards would weight items unequally in the averaged gradient)."""
    if world < 1 or batch_size % world:
        raise SamprefError(f"{what} of {batch_size} items cannot be split evenly over {world} processes: choose "
                           f"--num-gpus dividing it, or --set batch_size to a multiple of {world}")
    return batch_size // world


def shard_batch(batch: Any, rank_: int, world: int) -> Any:
    """This rank's part of a global batch: every tensor (in nested dicts, lists and tuples) of leading size ``B`` is
    cut to its contiguous rows ``[rank_ * B / world, (rank_ + 1) * B / world)`` (a view, no copy); anything else
    (a batch index, strings) is kept whole. ``B`` must be divisible by ``world``.

    Example: ``{"index": 3, "labeled": {"image": (4, C, S, S)}}`` on rank 1 of 2 -> ``{"index": 3, "labeled":
    {"image": rows 2..3, (2, C, S, S)}}``.
    """
    if world == 1:
        return batch
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 0:
            return batch
        size = check_divisible(int(batch.shape[0]), world, "a batch tensor")
        return batch[rank_ * size:(rank_ + 1) * size]
    if isinstance(batch, dict):
        return {key: shard_batch(value, rank_, world) for key, value in batch.items()}
    if isinstance(batch, list | tuple):
        parts = [shard_batch(value, rank_, world) for value in batch]
        return type(batch)(*parts) if hasattr(batch, "_fields") else type(batch)(parts)
    return batch


def mean_metrics(metrics: dict[str, float], device: torch.device) -> dict[str, float]:
    """Step metrics (floats, e.g. ``{"loss": shard mean loss}``) averaged over the ranks with one ``all_reduce``;
    with equal shards the mean of per-rank means is the global batch mean. Every rank must report the same keys.
    Unchanged without a group."""
    if world_size() == 1 or not metrics:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([float(metrics[key]) for key in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    values /= world_size()
    return {key: float(value) for key, value in zip(keys, values.tolist(), strict=True)}


def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.parallel.DistributedDataParallel:
    """``module`` (already on ``device``) in DDP; construction broadcasts rank 0's parameters and buffers to every
    rank. The wrapper shares the module's parameters: optimizers and checkpoints keep using the module itself."""
    device_ids = [device.index if device.index is not None else local_rank()] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


@contextmanager
def swapped(networks: dict[str, torch.nn.Module], wrappers: dict[str, torch.nn.Module]) -> Iterator[None]:
    """Within the block, ``networks[name]`` is ``wrappers[name]`` (the DDP wrapper), so a ``train_step`` that calls
    ``self.network(...)`` synchronises gradients; the plain modules are put back afterwards, whatever happens."""
    plain = {name: networks[name] for name in wrappers}
    networks.update(wrappers)
    try:
        yield
    finally:
        networks.update(plain)
