"""GPU slot pool: real concurrency across processes, crash recovery, pass-through cases."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from wsss.gpu_slots import acquire_gpu_fds, default_lock_dir, gpu_slot, main, parse_visible_devices, visible_gpus

REPO = Path(__file__).resolve().parents[1]

# One fake GPU job: wait for a slot, record (slot, start, end) while holding it.
WORKER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from wsss.gpu_slots import gpu_slot

    lock_dir, n_gpus, hold_s, out = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4])
    with gpu_slot(lock_dir, n_gpus, timeout_s=float(sys.argv[5]), poll_s=0.02) as slot:
        start = time.monotonic()
        env = os.environ.get("CUDA_VISIBLE_DEVICES")
        # Announce the acquisition before sleeping, so a parent can react while we hold the slot.
        out.with_suffix(".acquired").write_text(json.dumps({"slot": slot, "start": start}))
        time.sleep(hold_s)
        end = time.monotonic()
    out.write_text(json.dumps({"slot": slot, "env": env, "start": start, "end": end,
                               "after": os.environ.get("CUDA_VISIBLE_DEVICES")}))
    """)


def _clean_env(**extra: str) -> dict[str, str]:
    """Environment for worker processes: no scheduler, no preset devices, repo importable."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURM_JOBID", "WSSS_NO_GPU_SLOTS")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _start_worker(tmp: Path, name: str, n_gpus: int, hold_s: float, timeout_s: float = 30.0):
    script = tmp / "worker.py"
    if not script.exists():
        script.write_text(WORKER)
    out = tmp / f"{name}.json"
    cmd = [sys.executable, str(script), str(tmp / "locks"), str(n_gpus), str(hold_s), str(out), str(timeout_s)]
    return subprocess.Popen(cmd, env=_clean_env()), out


def _wait_for(path: Path, timeout_s: float) -> float:
    """Poll until ``path`` exists; return the monotonic time it was seen."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name} did not appear within {timeout_s}s")
        time.sleep(0.01)
    return time.monotonic()


@pytest.fixture
def no_scheduler(monkeypatch):
    for var in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURM_JOBID", "WSSS_NO_GPU_SLOTS"):
        monkeypatch.delenv(var, raising=False)


def test_six_jobs_share_two_slots_without_overlap(tmp_path):
    procs = [_start_worker(tmp_path, f"job{i}", n_gpus=2, hold_s=0.4) for i in range(6)]
    for proc, _ in procs:
        assert proc.wait(timeout=60) == 0
    records = [json.loads(out.read_text()) for _, out in procs]

    assert {r["slot"] for r in records} == {"0", "1"}, "both slots must be used"
    for r in records:
        assert r["env"] == r["slot"], "CUDA_VISIBLE_DEVICES must name the held slot"
        assert r["after"] is None, "CUDA_VISIBLE_DEVICES must be restored (unset) on exit"
    for i, a in enumerate(records):
        for b in records[i + 1 :]:
            overlap = a["start"] < b["end"] and b["start"] < a["end"]
            assert not (overlap and a["slot"] == b["slot"]), f"slot {a['slot']} shared: {a} {b}"
    # Real parallelism happened: some pair on different slots ran at the same time.
    assert any(a["start"] < b["end"] and b["start"] < a["end"] for i, a in enumerate(records) for b in records[i + 1 :])
    # 6 jobs x 0.4 s on 2 slots take >= 3 rounds; never more than 2 at once.
    events = sorted([(r["start"], 1) for r in records] + [(r["end"], -1) for r in records])
    running = peak = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        running += delta
        peak = max(peak, running)
    assert peak == 2


def test_sigkilled_job_frees_its_slot(tmp_path):
    holder0, out0 = _start_worker(tmp_path, "holder0", n_gpus=2, hold_s=60)
    _wait_for(out0.with_suffix(".acquired"), 20)
    holder1, out1 = _start_worker(tmp_path, "holder1", n_gpus=2, hold_s=60)
    _wait_for(out1.with_suffix(".acquired"), 20)
    slot_of_0 = json.loads(out0.with_suffix(".acquired").read_text())["slot"]
    assert slot_of_0 == "0"

    waiter, out_w = _start_worker(tmp_path, "waiter", n_gpus=2, hold_s=0.0)
    try:
        time.sleep(0.5)
        assert not out_w.with_suffix(".acquired").exists(), "waiter must block while both slots are held"
        holder0.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        holder0.wait(timeout=10)
        seen_at = _wait_for(out_w.with_suffix(".acquired"), 10)
        assert waiter.wait(timeout=20) == 0
        record = json.loads(out_w.read_text())
        assert record["slot"] == "0"
        assert seen_at - killed_at < 2.0, f"slot reuse took {seen_at - killed_at:.2f}s"
    finally:
        for proc in (holder0, holder1, waiter):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_no_gpu_yields_none_and_leaves_env(tmp_path, monkeypatch, no_scheduler):
    with gpu_slot(tmp_path / "locks", n_gpus=0) as slot:
        assert slot is None
        assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert not (tmp_path / "locks").exists()

    # Autodetection without nvidia-smi on PATH means no GPU.
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    with gpu_slot(tmp_path / "locks") as slot:
        assert slot is None
        assert "CUDA_VISIBLE_DEVICES" not in os.environ

    # An empty CUDA_VISIBLE_DEVICES hides every GPU and must stay exactly as it was.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with gpu_slot(tmp_path / "locks", n_gpus=None) as slot:
        assert slot is None
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""


def test_slurm_assignment_passes_through(tmp_path, monkeypatch, no_scheduler):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with gpu_slot(tmp_path / "locks", n_gpus=8) as slot:
        assert slot == "3"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert not (tmp_path / "locks").exists(), "no lock files under a scheduler"

    # A SLURM job without a GPU allocation gets None (CPU), and nothing is locked.
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with gpu_slot(tmp_path / "locks", n_gpus=8) as slot:
        assert slot is None
    assert not (tmp_path / "locks").exists()


def test_opt_out_env_passes_through(tmp_path, monkeypatch, no_scheduler):
    monkeypatch.setenv("WSSS_NO_GPU_SLOTS", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with gpu_slot(tmp_path / "locks", n_gpus=2) as slot:
        assert slot == "0,1"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert not (tmp_path / "locks").exists()


def test_timeout_when_all_slots_busy(tmp_path, no_scheduler):
    locks = tmp_path / "locks"
    # flock locks taken through separate open() calls conflict even inside one process.
    with gpu_slot(locks, n_gpus=1, poll_s=0.05) as first:
        assert first == "0"
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="no free GPU slot"):
            with gpu_slot(locks, n_gpus=1, timeout_s=0.3, poll_s=0.05):
                pass
        assert 0.25 < time.monotonic() - t0 < 3.0
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    # Released on exit: the slot is free again.
    with gpu_slot(locks, n_gpus=1, timeout_s=0) as again:
        assert again == "0"


def test_count_two_takes_two_slots_and_restores_previous(tmp_path, monkeypatch, no_scheduler):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5,7")
    locks = tmp_path / "locks"
    devices = ["2", "5", "7"]
    with gpu_slot(locks, count=2, poll_s=0.05) as pair:
        assert pair == "2,5"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,5"
        # What another job sees meanwhile (it still has CUDA_VISIBLE_DEVICES=2,5,7): only 7 is free.
        chosen, fds = acquire_gpu_fds(locks, devices, count=1, timeout_s=0, poll_s=0.05)
        assert chosen == ["7"], "lock files are named by physical id"
        for fd in fds:
            os.close(fd)  # closing the file releases the flock
        with pytest.raises(TimeoutError):
            acquire_gpu_fds(locks, devices, count=2, timeout_s=0.1, poll_s=0.05)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,5,7"
    assert sorted(p.name for p in locks.iterdir()) == ["gpu2.lock", "gpu5.lock", "gpu7.lock"]
    # All three free again after exit.
    chosen, fds = acquire_gpu_fds(locks, devices, count=3, timeout_s=0, poll_s=0.05)
    assert chosen == devices
    for fd in fds:
        os.close(fd)
    with pytest.raises(ValueError, match="count=4"):
        with gpu_slot(locks, count=4):
            pass


def test_visible_gpus_sources(tmp_path, monkeypatch, no_scheduler):
    assert parse_visible_devices(None) is None
    assert parse_visible_devices("0, 1,-1,3") == ["0", "1"]
    assert parse_visible_devices("GPU-ab12,MIG-cd34") == ["GPU-ab12", "MIG-cd34"]
    assert visible_gpus(3) == ["0", "1", "2"]
    with pytest.raises(ValueError, match="n_gpus"):
        visible_gpus(-1)

    # A fake nvidia-smi: two GPUs, one with a MIG child line that must not count.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    smi = fake_bin / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        "echo 'GPU 0: NVIDIA H100 (UUID: GPU-aaa)'\n"
        "echo '  MIG 1g.10gb Device 0: (UUID: MIG-bbb)'\n"
        "echo 'GPU 1: NVIDIA H100 (UUID: GPU-ccc)'\n"
    )
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(fake_bin))
    assert visible_gpus() == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert visible_gpus() == ["1"]
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        visible_gpus(2)


def test_cli_runs_command_with_slot(tmp_path, capfd, no_scheduler):
    code = "import os, sys; print('CVD=' + os.environ['CUDA_VISIBLE_DEVICES']); sys.exit(3)"
    rc = main(["--lock-dir", str(tmp_path / "locks"), "--n-gpus", "2", "--", sys.executable, "-c", code])
    assert rc == 3
    assert "CVD=0" in capfd.readouterr().out
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_default_lock_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("WSSS_GPU_LOCK_DIR", raising=False)
    assert default_lock_dir().name == f"wsss-gpu-slots-{os.getuid()}"
    monkeypatch.setenv("WSSS_GPU_LOCK_DIR", str(tmp_path / "shared"))
    assert default_lock_dir() == tmp_path / "shared"


def test_compute_job_sets_the_rules_torch_threads():
    import torch

    from wsss.devices import compute_job

    for threads in (3, 1):
        with compute_job(threads) as devices:
            assert devices is None and torch.get_num_threads() == threads
