"""What a pretraining run needs from its surroundings: processes (torchrun), device, threads,
signals, an output folder to itself and the disk space to save in it."""

import errno
import fcntl
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Dict, Optional

import torch

from ..errors import PretrainingError


class Distributed:
    """Rank and world size under torchrun (WORLD_SIZE, RANK, LOCAL_RANK); one process otherwise."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(self.world)))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def start(self, device: torch.device) -> None:
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def from_main(self, value: float) -> float:
        """The main process's `value`, in every process."""
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        torch.distributed.broadcast(tensor, src=0)
        return float(tensor)

    def mean(self, values: Dict[str, float]) -> Dict[str, float]:
        if self.world == 1 or not values:
            return values
        tensor = torch.tensor(list(values.values()), dtype=torch.float64)
        torch.distributed.all_reduce(tensor)
        return dict(zip(values, (tensor / self.world).tolist()))


def select_device(gpu_id: int, dist: Distributed) -> torch.device:
    if gpu_id < 0:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise PretrainingError(
            f"--gpu-id {gpu_id}: PyTorch sees no CUDA GPU; install a CUDA build of torch or use the CPU"
        )
    index = gpu_id + dist.local_rank
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def default_threads(local_world: int = 1) -> int:
    """Half the cores this process may use, shared by the ranks on this machine: torch's default
    of all cores collapses as soon as another process wants one (OpenMP threads spin-wait on each
    other), and a matrix product gains little from the second thread of a core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // 2 // max(1, local_world))


def set_threads(threads: Optional[int], dist: Distributed) -> int:
    """Set torch's intra-op threads (`threads`, or `default_threads`); returns the number set."""
    count = threads or default_threads(dist.local_world)
    torch.set_num_threads(count)
    return count


class StopSignals:
    """While active, SIGINT (Ctrl-C) and SIGTERM (what Slurm, Kubernetes and systemd send before
    a kill) end the run after the current step, with its state saved. `received` is the signal."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self.previous: Dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def __call__(self) -> bool:
        return self.received is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.received or 0)

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""

    def _handle(self, signum, frame) -> None:
        self.received = signum


class OutputLock:
    """An exclusive lock on the output folder, so two runs never write into the same one. The
    kernel releases it when the process ends, however it ends."""

    FILE = ".bert-pretrain.lock"

    def __init__(self, output_dir: Path):
        self.path = output_dir / self.FILE
        self.file = None

    def __enter__(self) -> "OutputLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = self.path.open("a+")
        except OSError as err:
            raise PretrainingError(f"cannot write to the output folder {self.path.parent}: {err}") from err
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            raise PretrainingError(
                f"{self.path.parent} is in use by another bert-pretrain run (process {holder}); wait for it "
                "to finish or choose another output folder"
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()


def check_output_dir(output_dir: Path, save_bytes: int) -> None:
    """Fail before training if no checkpoint could be written there."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise PretrainingError(f"cannot write to the output folder {output_dir}: {err}") from err
    free = shutil.disk_usage(output_dir).free
    if free < save_bytes:
        raise PretrainingError(
            f"{output_dir} has {free / 2**20:.0f} MiB free but a checkpoint with its optimizer state needs "
            f"about {save_bytes / 2**20:.0f} MiB; free space or choose another output folder"
        )


def is_disk_full(err: OSError) -> bool:
    return err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
