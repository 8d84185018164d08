"""Data-parallel training and evaluation under ``torchrun``: the one module that knows about process groups.

``torchrun --nproc_per_node=N -m resdense train RECIPE`` starts N processes with torch's ``env://`` variables
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``).
:func:`init_from_env` joins them into one group (gloo on CPU, NCCL on CUDA; ``train.dist_backend`` overrides)
for the life of the process, gives each process its own device (``cuda:LOCAL_RANK``) and its share of the cores,
and keeps the other ranks' logs quiet. Without those variables nothing here does anything, and the collectives
(:func:`barrier`, :func:`broadcast_object`, :func:`all_gather_object`, :func:`sum_floats`, :func:`broadcast_buffers`,
:func:`on_main`) are no-ops.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from resdense.errors import ConfigError, ResdenseError

__all__ = ["World", "world", "main_process", "launched", "init_from_env", "resolve_device", "barrier", "broadcast_object",
           "all_gather_object", "sum_floats", "broadcast_buffers", "on_main", "main_first", "shard", "wrap_model",
           "StopRequest", "ignore_stop_signals"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """Where this process stands: ``rank`` of ``size`` processes, ``local_rank`` of ``local_size`` on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that logs, draws progress and writes files."""
        return self.rank == 0


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> World:
    """This process's :class:`World`: from the initialised process group, else one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    rank, size = dist.get_rank(), dist.get_world_size()
    return World(rank, size, int(os.environ.get("LOCAL_RANK", rank)), int(os.environ.get("LOCAL_WORLD_SIZE", size)))


def main_process() -> bool:
    """Whether this process is rank 0 (``RANK`` of a torchrun launch, so also before and after the process group;
    ``True`` in one process): the one that prints."""
    return int(os.environ.get("RANK", "0")) == 0


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or anything else that sets the ``env://`` variables)."""
    return all(k in os.environ for k in _ENV)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise ``torch.device(name)``. Under ``torchrun``, ``auto`` and
    ``cuda`` give each process its own GPU, ``cuda:LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ConfigError(f"train.device = {name!r} but CUDA is not available here; use 'auto' or 'cpu'")
    if not launched():
        return device
    local_rank, local_size = int(os.environ["LOCAL_RANK"]), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if device.index is not None:
        if local_size > 1:
            raise ConfigError(f"train.device = {name!r} puts all {local_size} processes of this node on one GPU; "
                              "use 'auto' or 'cuda' (each process takes cuda:LOCAL_RANK)")
        return device
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK {local_rank} has no GPU: this node has {torch.cuda.device_count()}; start "
                          "at most that many processes per node (torchrun --nproc_per_node)")
    return torch.device("cuda", local_rank)


def _backend(name: str, cuda: bool) -> str:
    if name == "auto":
        return "nccl" if cuda else "gloo"
    if name == "nccl" and not cuda:
        raise ConfigError("train.dist_backend = 'nccl' needs CUDA devices and this run is on the CPU; use 'gloo' "
                          "(or 'auto')")
    return name


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (cgroups, taskset, SLURM)
    except AttributeError:
        return os.cpu_count() or 1


def _set_threads(local_size: int) -> str:
    """Threads of this process: ``OMP_NUM_THREADS`` when set (torchrun sets it to 1 when it starts several processes
    and it is unset), else the node's cores shared between its processes."""
    cores = _cores()
    if "OMP_NUM_THREADS" in os.environ:
        n = torch.get_num_threads()
        hint = ""
        if n * local_size < cores:
            hint = (f"; {cores - n * local_size} of {cores} cores idle: export OMP_NUM_THREADS="
                    f"{max(1, cores // local_size)} to use them")
        return f"{n} threads per process (OMP_NUM_THREADS{hint})"
    n = max(1, cores // local_size)
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)  # for the loader workers and anything else this process starts
    return f"{n} threads per process ({cores} cores // {local_size} processes)"


def init_from_env(backend: str = "auto", device: str = "auto") -> World:
    """Join the process group that ``torchrun`` describes in the environment (``env://``), once: the group lives
    until the process exits (joining again after leaving would read the first group's stale addresses from
    torchrun's store). Sets this process's GPU and threads first. Returns this process's :class:`World`; without
    torchrun, or with a group already there, it only returns it."""
    if not launched() or not dist.is_available() or dist.is_initialized():
        return world()
    dev = resolve_device(device)
    chosen = _backend(backend, dev.type == "cuda")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    threads = _set_threads(int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    kwargs = {"device_id": dev} if chosen == "nccl" else {}
    dist.init_process_group(chosen, init_method="env://", **kwargs)
    atexit.register(_leave)
    w = world()
    if not w.main:
        logging.getLogger("resdense").setLevel(logging.WARNING)  # rank 0 alone logs (warnings still show)
    log.info("torch.distributed: %d processes (%d on this node), backend %s, %s, %s", w.size, w.local_size, chosen,
             dev, threads)
    return w


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# ---- collectives (no-ops in one process) ---------------------------------------------------------------------------
def barrier() -> None:
    """Wait for every process of the group (nothing to wait for in one process)."""
    if _active():
        dist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (picklable objects)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_floats(values: Sequence[float]) -> list[float]:
    """The sums over ranks of ``values`` (float64; the same list length on every rank)."""
    if not _active():
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.tolist()


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm statistics) to every rank. DDP broadcasts them at the start of each
    training forward pass, so between steps every rank holds its own; evaluation and checkpoints use rank 0's."""
    if _active():
        for buf in module.buffers():
            dist.broadcast(buf, src)


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` run on rank 0 alone, its result handed to every rank; an exception there is raised on every rank
    (the same one-line :class:`~resdense.errors.ResdenseError`, or a ``RuntimeError`` naming any other), so no rank
    waits for a result that will never come. Also a barrier: no rank goes on before rank 0 has finished (e.g. a
    checkpoint write)."""
    if not _active():
        return fn()
    result, error, raised = None, None, None
    if dist.get_rank() == 0:
        try:
            result = fn()
        except Exception as err:  # every rank must hear of it, whatever it is
            raised = err
            error = err if isinstance(err, ResdenseError) else RuntimeError(f"rank 0: {type(err).__name__}: {err}")
    result, error = broadcast_object((result, error))
    if raised is not None:
        raise raised
    if error is not None:
        error.every_rank = True  # the same error on every rank: rank 0 alone reports it
        raise error
    return result


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. generating a dataset on disk), the others after it, so none of them reads a
    half-written file."""
    if world().main:
        yield
        barrier()
    else:
        barrier()
        yield


def shard(n: int) -> range:
    """This rank's share of ``n`` items: ``rank, rank + size, ...`` (every item on exactly one rank)."""
    w = world()
    return range(w.rank, n, w.size)


# ---- the model ----------------------------------------------------------------------------------------------------
SYNC_BN_CPU = ("train.sync_bn = true needs CUDA: torch {}'s SyncBatchNorm refuses CPU tensors and has no CPU kernels "
               "(aten::batch_norm_stats), so it cannot run with gloo on the CPU; use norm: frozen_bn or a GroupNorm "
               "decoder, or train.sync_bn: false (each process normalises its own batch)")


def wrap_model(model: nn.Module, device: torch.device, *, sync_bn: bool = False,
               find_unused_parameters: bool = False) -> tuple[nn.Module, nn.Module]:
    """``(model, net)``: ``model`` with SyncBatchNorm when ``sync_bn`` (in a multi-process run), and ``net``, the
    module to run training forward passes through: ``DistributedDataParallel(model)`` in a multi-process run, else
    ``model`` itself. Build the optimizer over ``model``'s parameters (``net`` shares them).

    Raises:
        ConfigError: ``sync_bn`` in a multi-process run on the CPU (see :data:`SYNC_BN_CPU`).
    """
    if not _active():
        if sync_bn:
            log.info("train.sync_bn: one process, so BatchNorm already sees the whole batch; left as it is")
        return model, model
    if sync_bn:
        if device.type != "cuda":
            raise ConfigError(SYNC_BN_CPU.format(torch.__version__.split("+")[0]))
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    from torch.nn.parallel import DistributedDataParallel

    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                  find_unused_parameters=find_unused_parameters)
    return model, net


# ---- preemption ---------------------------------------------------------------------------------------------------
class StopRequest:
    """A context in which SIGTERM and SIGINT (Ctrl-C) do not kill the process but set :attr:`signum`.

    SIGTERM is what ``torchrun`` sends every worker when it is itself terminated or when another worker died, and
    what SLURM and Kubernetes send before they kill a job; SIGINT is a user's Ctrl-C. The training loop reads the
    flag after each step (all ranks agree on it), writes ``last.pt`` and stops. A second SIGINT while the step
    finishes is the user insisting: it raises ``KeyboardInterrupt`` at once (``last.pt`` then holds the previous
    checkpoint). Installed only in the main thread (Python's rule); the previous handlers come back on exit.
    """

    def __init__(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.signals = tuple(signals)
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is None and signum == signal.SIGINT and main_process():  # os.write: no lock in a handler
            os.write(2, b"Ctrl-C: finishing this step, then writing last.pt (Ctrl-C again to stop at once)\n")
        self.signum = self.signum or signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: loader workers ignore SIGTERM and SIGINT. ``torchrun`` signals each worker's
    whole process group, and a terminal's Ctrl-C reaches the whole foreground group: a loader worker killed by
    either would abort the step its parent is finishing; workers end when their parent does."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
