"""Where and in what precision a run trains, chosen from what the machine can do at run time.

A config says ``bf16: auto``; this module decides per device (a CUDA GPU's bf16 support, a CPU's
AVX512-BF16 / AMX flags) and says why, so the run's config.json records the choice."""

from __future__ import annotations

from pathlib import Path

import torch

from gen_engine.errors import UserError


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA GPU is visible to torch")
    return torch.device(device)


def cpu_info(cpuinfo: str | None = None) -> tuple[str, list[str]]:
    """The CPU's model name and flags from /proc/cpuinfo (``cpuinfo``: that file's text, for tests);
    ("unknown", []) where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text() if cpuinfo is None else cpuinfo
    except OSError:
        return "unknown", []
    field = lambda key: next((ln.split(":", 1)[1] for ln in text.splitlines() if ln.startswith(key)), "")  # noqa: E731
    return field("model name").strip() or "unknown", field("flags").split()


def cpu_bf16_native(cpuinfo: str | None = None) -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), read from /proc/cpuinfo's flags
    (``cpuinfo``: that file's text, for tests).

    Without it, torch emulates bf16 matmuls and convolutions: measured on an AVX2-only AMD EPYC, a
    shapes32 step took ~10 s under bf16 against ~0.7 s in fp32."""
    _, flags = cpu_info(cpuinfo)
    if not flags:
        return False, "CPU flags unreadable (no /proc/cpuinfo): fp32"
    native = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    if native:
        return True, f"CPU has native bf16 ({', '.join(native)})"
    return False, "CPU lacks native bf16 (no avx512_bf16 / amx_bf16): fp32"


def bf16_autocast(mode: str, device: torch.device) -> tuple[bool, str]:
    """Whether to train under bf16 autocast, and why (see TrainConfig.bf16)."""
    if mode != "auto":
        return mode == "on", f"bf16 {mode} in the config"
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, "CUDA GPU with bf16" if ok else "CUDA GPU without bf16: fp32"
    if device.type == "cpu":
        return cpu_bf16_native()
    return False, f"{device.type}: fp32"
