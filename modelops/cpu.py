"""What the CPU can do for int8 and bf16, read from /proc/cpuinfo (Linux) or platform."""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def parse_cpuinfo(text: str) -> tuple[str | None, set[str]]:
    """The CPU's name and ISA flags from the text of /proc/cpuinfo (its first processor).

    The name carries the CPU family and model numbers where the file gives them, because a virtual machine's
    model name is often only the vendor's line ("AMD EPYC", "Intel(R) Xeon(R) Processor"), which names several
    generations whose int8 speeds differ by 2x: "AMD EPYC (family 26, model 2)" is a Zen 5, family 25 a Zen 3 or
    Zen 4.
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if not key and fields:  # the blank line after the first processor
            break
        fields.setdefault(key, value.strip())
    name = fields.get("model name") or None
    if name and fields.get("cpu family") and fields.get("model"):
        name = f"{name} (family {fields['cpu family']}, model {fields['model']})"
    return name, set(fields.get("flags", "").split())


@lru_cache(maxsize=1)
def cpu_info() -> dict:
    """CPU model, logical cores and the ISA flags that matter for int8/bf16 kernels."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        name, flags = parse_cpuinfo(cpuinfo.read_text())
        model = name or model
    return {
        "cpu_model": model,
        "logical_cores": os.cpu_count() or 1,
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        **{f"has_{flag}": flag in flags for flag in ISA_FLAGS},
    }


def cpu_summary() -> str:
    """One line naming this CPU for a benchmark's records: model, usable cores, the int8/bf16 ISA flags present."""
    info = cpu_info()
    present = [flag for flag in ISA_FLAGS if info[f"has_{flag}"]]
    return f"{info['cpu_model']}, {info['usable_cores']} usable cores, {' '.join(present) or 'no AVX2'}"


def int8_outlook() -> tuple[bool, str]:
    """Whether int8 is likely to beat fp32 here, and a sentence that says why."""
    info = cpu_info()
    if info["has_amx_int8"]:
        return True, "AMX int8 tiles present: int8 matrix work runs on AMX (largest int8 speed-up)."
    if info["has_avx512_vnni"] or info["has_avx_vnni"]:
        return True, "VNNI present: int8 dot products run in one instruction (int8 is usually 2-4x faster than fp32)."
    if info["has_avx2"]:
        return True, "AVX2 but no VNNI: int8 kernels work but gain less (often 1.2-2x over fp32)."
    return False, "No AVX2/VNNI/AMX found: int8 kernels are unlikely to beat fp32 on this CPU."
