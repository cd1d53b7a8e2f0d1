"""What the machine multiplies fast, and a memory setting that matters on the CPU.

* :func:`bf16_fast` / :func:`resolve_precision`: bfloat16 matrix products run about 5x faster
  than float32 on CPUs with AMX or AVX-512 BF16 and on Ampere or newer GPUs (measured in the
  Results chapter); ``"auto"`` precision uses them there and nowhere else.
* :func:`keep_freed_memory`: a reconstruction step allocates and frees dozens of
  megabyte-sized tensors. By default glibc hands such blocks back to the kernel on ``free``
  and the next allocation pays a page fault for every 4 KiB it touches; telling the allocator
  to keep them cut a CIFAR-10 stationarity step at n = 500 from 60 to 41 ms on two cores.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

__all__ = ["PRECISIONS", "bf16_fast", "cpu_info", "default_device", "resolve_precision",
           "keep_freed_memory"]

PRECISIONS = ("auto", "full", "bfloat16", "float16")
HALF = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def default_device() -> str:
    """``"cuda"`` where a GPU is visible, else ``"cpu"``: the device every entry point (the
    book's pipeline, ``reproduce``, the command line) uses unless told otherwise."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def bf16_fast(device: torch.device | str) -> bool:
    """Does this device multiply bfloat16 matrices faster than float32?

    True on CUDA GPUs with bfloat16 tensor cores (compute capability 8.0 or newer) and on
    CPUs with AMX or AVX-512 BF16 (the ``amx_bf16`` / ``avx512_bf16`` flags of
    ``/proc/cpuinfo``) where PyTorch's oneDNN backend is available.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    cpu = cpu_info()
    return cpu["amx_bf16"] or cpu["avx512_bf16"]


def cpu_info() -> dict:
    """The CPU a result ran on: its model name and whether it has the bfloat16 matrix
    instructions that :func:`bf16_fast` looks for (``/proc/cpuinfo``; on other systems the
    processor string and ``False``). Results differ in their last bits from one CPU to
    another, and ``"auto"`` precision means bfloat16 on some and full on others, so every
    run card records this."""
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
        if flags and key.strip() == "model name":
            break
    return {"model": model, "amx_bf16": "amx_bf16" in flags,
            "avx512_bf16": "avx512_bf16" in flags}


def resolve_precision(precision: str, device: torch.device | str,
                      dtype: str | torch.dtype = "float32") -> str:
    """``"auto"`` becomes ``"bfloat16"`` for float32 work where :func:`bf16_fast` holds, else
    ``"full"`` (a float64 run asks for precision, and gets it)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        single = dtype in ("float32", torch.float32)
        return "bfloat16" if single and bf16_fast(device) else "full"
    return precision


_KEPT = False


def keep_freed_memory() -> bool:
    """Ask glibc's allocator to keep freed blocks for reuse instead of returning them to the
    kernel (``mallopt``: mmap threshold and trim threshold raised to 1 GiB).

    Process-wide and idempotent; a no-op (returns False) where the C library is not glibc.
    The process's resident memory then stays near its peak until it exits.
    """
    global _KEPT
    if _KEPT:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    big = 1 << 30
    ok = mallopt(m_mmap_threshold, big) or mallopt(m_mmap_threshold, 32 << 20)
    ok = ok and mallopt(m_trim_threshold, big)
    _KEPT = bool(ok)
    return _KEPT
