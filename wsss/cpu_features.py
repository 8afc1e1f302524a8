"""What this machine's CPU computes natively, for the settings whose speed depends on it."""

from __future__ import annotations

from pathlib import Path

__all__ = ["native_bf16"]

# CPU flags of native bf16 arithmetic: x86 AVX-512 BF16 and AMX, Arm's BF16 extension
_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has bf16 arithmetic (``/proc/cpuinfo`` flags); False where that cannot be told.

    Without it, torch emulates bf16 products in software: on an AVX2 CPU the CLIP-ES CAM step ran about
    ten times slower in bf16 than in fp32.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, Arm
            flags.update(value.split())
    return bool(flags & _BF16_FLAGS)
