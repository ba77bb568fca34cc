"""What the machine can do, and the precision a stage runs at because of it.

bf16 pays only where the hardware computes in it: a CUDA GPU with bf16, or a CPU with AVX512-BF16 or AMX
(Intel Cooper Lake / Sapphire Rapids and later, AMD Zen 4 and later), or an Arm CPU with the BF16 extension.
Elsewhere PyTorch emulates it and bf16 autocast is several times *slower* than fp32 (measured on an AVX2-only
Zen 3: 410 s against 31 s for one PPO step). So `mixed_precision: auto` (and `bf16: auto` in the TRL stages)
resolves to bf16 only there.

The capabilities are read once (`detect()`) and passed around as a value, so the decision is a pure function
(`resolve_precision`) that tests exercise for every case without the test machine's CPU.

The *CPU kind* names what makes CPU results differ bit for bit between machines: the instruction set PyTorch
dispatches its kernels to (AVX2 vs AVX-512 kernels sum in another order), the vendor (oneDNN/MKL pick other code
paths) and native bf16. The same seeded stage reproduces its numbers exactly on the same kind only.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Capabilities:
    device: str  # "cpu" | "cuda" | "mps" | ...
    arch: str  # platform.machine(): x86_64, aarch64, arm64
    vendor: str  # GenuineIntel, AuthenticAMD, ... or "unknown"
    isa: str  # PyTorch's CPU kernel level: AVX512, AVX2, DEFAULT, ... (ATEN_CPU_CAPABILITY lowers it)
    cpu_bf16: bool  # the CPU has bf16 arithmetic: avx512_bf16 / amx_bf16 (x86) or bf16 (Arm)
    amx: bool  # Intel AMX tiles (amx_bf16)
    gpu_name: str | None = None
    gpu_bf16: bool = False  # a CUDA device that computes bf16 natively (compute capability 8.0+)


def _cpu_flags() -> tuple[str, set[str]]:
    """(vendor, flags) from /proc/cpuinfo; ("unknown", empty) where there is none (macOS, Windows)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown", set()
    vendor, flags = "unknown", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "vendor_id" and vendor == "unknown":
            vendor = value.strip()
        elif key in ("flags", "features") and not flags:  # x86: flags; Arm: Features
            flags = set(value.split())
    return vendor, flags


def detect(device: str | None = None) -> Capabilities:
    """The capabilities of `device` (default: CUDA if available, else the CPU) and of this machine's CPU."""
    import torch

    vendor, flags = _cpu_flags()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu_name, gpu_bf16 = None, False
    if device.startswith("cuda"):
        gpu_name = torch.cuda.get_device_name(device)
        gpu_bf16 = torch.cuda.get_device_capability(device)[0] >= 8
    return Capabilities(
        device=device.split(":")[0], arch=platform.machine(), vendor=vendor,
        isa=torch.backends.cpu.get_cpu_capability(),
        cpu_bf16=bool(flags & {"avx512_bf16", "amx_bf16", "bf16"}), amx="amx_bf16" in flags,
        gpu_name=gpu_name, gpu_bf16=gpu_bf16)


def process_state():
    """accelerate's PartialState of this process: its device, rank and number of processes (one, unless started
    by `accelerate launch`). Without CUDA the processes run on the CPU and talk over gloo."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def native_bf16(caps: Capabilities) -> tuple[bool, str]:
    """Does the device compute bf16 natively? (answer, the reason in a few words)."""
    if caps.device == "cuda":
        if caps.gpu_bf16:
            return True, f"CUDA GPU {caps.gpu_name} has native bf16"
        return False, f"CUDA GPU {caps.gpu_name} has no native bf16 (compute capability < 8.0)"
    if caps.device != "cpu":
        return False, f"bf16 is not chosen automatically on {caps.device}"
    if not caps.cpu_bf16:
        return False, f"CPU ({caps.vendor}, {caps.isa}) has no AVX512-BF16/AMX: bf16 would be emulated"
    if caps.arch in ("x86_64", "AMD64") and not caps.isa.startswith("AVX512"):
        return False, f"CPU has bf16 instructions but PyTorch runs its {caps.isa} kernels (ATEN_CPU_CAPABILITY?)"
    kind = "AMX" if caps.amx else ("AVX512-BF16" if caps.arch in ("x86_64", "AMD64") else "BF16")
    return True, f"CPU ({caps.vendor}) has {kind}"


def resolve_precision(requested: str, caps: Capabilities) -> tuple[str, str]:
    """Resolve a mixed-precision setting to what runs: "bf16", "fp16" or "none", with the reason.

    auto -> bf16 where the device computes it natively, else none (fp32). An explicit choice is kept (the
    reason then says when it will be slow), except fp16 on a CPU, which PyTorch's autocast does not offer.
    """
    ok, why = native_bf16(caps)
    if requested == "auto":
        return ("bf16", f"auto: {why}") if ok else ("none", f"auto: fp32, {why}")
    if requested == "bf16":
        return "bf16", "requested" + ("" if ok else f" (slow here: {why})")
    if requested == "fp16" and caps.device == "cpu":
        return "none", "fp16 requested, but fp16 autocast runs on GPUs only: fp32 on this CPU"
    return requested, "requested"


def cpu_kind(caps: Capabilities) -> str:
    """e.g. 'x86_64/AuthenticAMD/AVX512+bf16': results reproduce bit for bit between machines of one kind."""
    return f"{caps.arch}/{caps.vendor}/{caps.isa}" + ("+amx" if caps.amx else "+bf16" if caps.cpu_bf16 else "")


def platform_record(caps: Capabilities, precision: str | None = None, reason: str | None = None, *,
                    profiles: list[str] | None = None) -> dict:
    """What a stage writes beside its metrics: where it ran, at which precision and why, and the profile chain
    params.yaml was made with (`profiles`, params.profiles: every stage passes it; [] = the committed defaults)."""
    record = {"device": caps.device, "cpu_kind": cpu_kind(caps)}
    if caps.gpu_name:
        record["gpu"] = caps.gpu_name
    if precision is not None:
        record["precision"] = precision
        record["precision_reason"] = reason
    if profiles is not None:
        record["profiles"] = list(profiles)
    return record


def as_dict(caps: Capabilities) -> dict:
    return asdict(caps)
