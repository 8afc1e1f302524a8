"""GPU slot pool: give each concurrent local GPU job its own device through lock files.

Snakemake runs several ``resources: gpu=1`` jobs at once on a multi-GPU workstation but never
tells a job which device to use (snakemake#281), so every job lands on GPU 0.  A job that wraps
its GPU work in :func:`gpu_slot` takes an exclusive ``fcntl.flock`` on ``lock_dir/gpu<id>.lock``
for one free device and sets ``CUDA_VISIBLE_DEVICES`` to that id while it holds it.

Device discovery deliberately avoids ``torch.cuda.device_count()``: it initialises the CUDA
driver, which reads ``CUDA_VISIBLE_DEVICES`` once, so the variable we set afterwards would be
ignored in this process.  Instead the visible devices are, in order of precedence: an explicit
``n_gpus``, the ids already listed in ``CUDA_VISIBLE_DEVICES``, or the ``GPU <i>:`` lines of
``nvidia-smi -L`` (NVML does not touch the CUDA runtime).  No ``nvidia-smi`` means no GPU.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

OPT_OUT_ENV = "WSSS_NO_GPU_SLOTS"
LOCK_DIR_ENV = "WSSS_GPU_LOCK_DIR"
_GPU_LINE = re.compile(r"^GPU (\d+):")


def default_lock_dir() -> Path:
    """Machine-local lock directory: ``$WSSS_GPU_LOCK_DIR``, else ``$TMPDIR/wsss-gpu-slots-<uid>``."""
    # Per user by default (no permission clashes); users sharing GPUs point WSSS_GPU_LOCK_DIR at
    # one local mode-1777 directory, and the lock files are created mode 666 for that case.
    explicit = os.environ.get(LOCK_DIR_ENV)
    return Path(explicit) if explicit else Path(tempfile.gettempdir()) / f"wsss-gpu-slots-{os.getuid()}"


def parse_visible_devices(value: str | None) -> list[str] | None:
    """Split a ``CUDA_VISIBLE_DEVICES`` value into device tokens; None when the variable is unset."""
    if value is None:
        return None
    tokens = [t.strip() for t in value.split(",") if t.strip()]
    # CUDA stops at the first invalid entry; "-1" and "NoDevFiles" are the usual "no GPU" spellings.
    visible: list[str] = []
    for token in tokens:
        if token.startswith("-") or token == "NoDevFiles":
            break
        visible.append(token)
    return visible


def count_nvidia_smi_gpus() -> int:
    """Number of physical GPUs listed by ``nvidia-smi -L`` (0 if the tool is missing or fails)."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    if out.returncode != 0:
        return 0
    # MIG instances are indented lines below their GPU; count whole GPUs only.
    return sum(1 for line in out.stdout.splitlines() if _GPU_LINE.match(line))


def visible_gpus(n_gpus: int | None = None) -> list[str]:
    """Device ids this process may use: from ``n_gpus``, ``CUDA_VISIBLE_DEVICES`` or nvidia-smi."""
    if n_gpus is not None and n_gpus < 0:
        raise ValueError(f"n_gpus must be >= 0, got {n_gpus}")
    preset = parse_visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES"))
    if preset is not None:
        # The user already narrowed the devices (e.g. CUDA_VISIBLE_DEVICES=2,3 snakemake ...):
        # share out exactly those, by their physical ids.
        if n_gpus is not None:
            if n_gpus > len(preset):
                raise ValueError(
                    f"n_gpus={n_gpus} but CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r}"
                    f" lists only {len(preset)} device(s)"
                )
            return preset[:n_gpus]
        return preset
    if n_gpus is None:
        n_gpus = count_nvidia_smi_gpus()
    return [str(i) for i in range(n_gpus)]


def scheduler_assigned() -> bool:
    """True when a batch scheduler (SLURM) runs this job and owns device assignment."""
    return bool(os.environ.get("SLURM_JOB_ID") or os.environ.get("SLURM_JOBID"))


def _lock_path(lock_dir: Path, device: str) -> Path:
    # Device tokens may be UUIDs or MIG ids; keep them readable but filesystem-safe.
    return lock_dir / f"gpu{re.sub(r'[^A-Za-z0-9_.-]', '_', device)}.lock"


def _open_lock(path: Path) -> int:
    """Open (creating) a lock file; read-only is enough for flock if another user owns it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        return os.open(path, os.O_RDONLY)
    try:
        os.fchmod(fd, 0o666)  # let other users of a shared workstation lock it too
    except OSError:
        pass
    return fd


def _try_lock(path: Path) -> int | None:
    """Take a non-blocking exclusive flock on ``path``; return its fd, or None if it is held."""
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    # Diagnostics only ("who holds GPU 1?"); the lock itself is the flock, not the content.
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid={os.getpid()} host={socket.gethostname()} t={time.time():.0f}\n".encode())
    except OSError:
        pass
    return fd


def _release(fds: Sequence[int]) -> None:
    """Unlock and close lock fds (closing alone would release them; unlocking first is explicit)."""
    for fd in fds:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            pass
        os.close(fd)


def acquire_gpu_fds(
    lock_dir: Path, devices: Sequence[str], count: int, timeout_s: float, poll_s: float
) -> tuple[list[str], list[int]]:
    """Lock ``count`` of ``devices``; return the chosen ids and their open lock fds."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if count > len(devices):
        raise ValueError(f"job needs count={count} GPU(s) but only {len(devices)} are visible: {list(devices)}")
    if poll_s <= 0:
        raise ValueError(f"poll_s must be > 0, got {poll_s}")
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    while True:
        chosen: list[str] = []
        fds: list[int] = []
        for device in devices:
            fd = _try_lock(_lock_path(lock_dir, device))
            if fd is not None:
                chosen.append(device)
                fds.append(fd)
                if len(chosen) == count:
                    return chosen, fds
        # Never sit on a partial set while waiting: two gpu=2 jobs holding one slot each would
        # deadlock.
        _release(fds)
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"no free GPU slot after {timeout_s:.0f}s: wanted {count} of devices {list(devices)}"
                f" (lock files in {lock_dir}); cap concurrent GPU jobs with"
                f" `--resources gpu={len(devices)}` or set {OPT_OUT_ENV}=1 to bypass the pool"
            )
        # The last sleep ends at the deadline, so a slot freed just in time is still taken.
        time.sleep(max(0.0, min(poll_s, deadline - time.monotonic())))


@contextmanager
def gpu_slot(
    lock_dir: Path,
    n_gpus: int | None = None,
    *,
    count: int = 1,
    timeout_s: float = 24 * 3600.0,
    poll_s: float = 2.0,
) -> Iterator[str | None]:
    """Hold ``count`` GPU(s) exclusively and expose them through ``CUDA_VISIBLE_DEVICES``.

    Yields the ``CUDA_VISIBLE_DEVICES`` value in force inside the block, or None for "run on
    CPU".  Enter it before the first CUDA call of the process (CUDA reads the variable once).

    - ``WSSS_NO_GPU_SLOTS=1``, or a SLURM job (``SLURM_JOB_ID`` set): the scheduler, or the
      user, owns device assignment.  Nothing is locked or changed; the current
      ``CUDA_VISIBLE_DEVICES`` is yielded as is (None when unset, i.e. no GPU was assigned).
    - No visible GPU (``n_gpus=0``, an empty ``CUDA_VISIBLE_DEVICES``, no ``nvidia-smi``): yields
      None and leaves the environment untouched.
    - Otherwise: tries a non-blocking exclusive ``flock`` on ``lock_dir/gpu<id>.lock`` for each
      visible device in turn, polls every ``poll_s`` seconds while all are busy, and raises
      TimeoutError after ``timeout_s``.  ``CUDA_VISIBLE_DEVICES`` is set to the physical id(s)
      for the duration of the block and restored afterwards; the locks are released on exit.

    flock locks belong to the open file and vanish when the process dies, so a crashed or
    SIGKILLed job frees its slot immediately: there are no stale lock files to clean up.
    ``lock_dir`` must be local to the machine (e.g. :func:`default_lock_dir`): on a shared
    filesystem, jobs on different hosts would contend for each other's "GPU 0".  Do not nest
    it: an inner call sees only the devices the outer one holds (all busy) and waits.
    """
    if os.environ.get(OPT_OUT_ENV, "") not in ("", "0") or scheduler_assigned():
        yield os.environ.get("CUDA_VISIBLE_DEVICES")
        return
    devices = visible_gpus(n_gpus)
    if not devices:
        yield None
        return
    chosen, fds = acquire_gpu_fds(Path(lock_dir), devices, count, timeout_s, poll_s)
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    value = ",".join(chosen)
    os.environ["CUDA_VISIBLE_DEVICES"] = value
    try:
        yield value
    finally:
        if previous is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous
        _release(fds)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI for shell rules: ``python -m wsss.gpu_slots [options] -- CMD ARGS...``."""
    parser = argparse.ArgumentParser(
        prog="python -m wsss.gpu_slots",
        description="Run a command while holding a GPU slot (CUDA_VISIBLE_DEVICES set for it).",
    )
    parser.add_argument("--lock-dir", type=Path, default=default_lock_dir())
    parser.add_argument("--n-gpus", type=int, default=None)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=24 * 3600.0)
    parser.add_argument("--poll", type=float, default=2.0)
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no command given (use: python -m wsss.gpu_slots [options] -- CMD ...)")
    with gpu_slot(args.lock_dir, args.n_gpus, count=args.count, timeout_s=args.timeout, poll_s=args.poll):
        return subprocess.run(cmd, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
