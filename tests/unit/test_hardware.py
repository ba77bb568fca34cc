"""The precision decision (`mixed_precision: auto`, `bf16: auto`) for each kind of machine, with the capabilities
injected rather than read off the test machine; and the CPU kind that check-repro compares."""

import dataclasses

import pytest

from detoxrl import hardware
from detoxrl.hardware import Capabilities, cpu_kind, resolve_precision

AVX2_ZEN3 = Capabilities(device="cpu", arch="x86_64", vendor="AuthenticAMD", isa="AVX2", cpu_bf16=False, amx=False)
ZEN4 = Capabilities(device="cpu", arch="x86_64", vendor="AuthenticAMD", isa="AVX512", cpu_bf16=True, amx=False)
SAPPHIRE_RAPIDS = Capabilities(device="cpu", arch="x86_64", vendor="GenuineIntel", isa="AVX512", cpu_bf16=True,
                               amx=True)
SKYLAKE_X = Capabilities(device="cpu", arch="x86_64", vendor="GenuineIntel", isa="AVX512", cpu_bf16=False, amx=False)
GRAVITON3 = Capabilities(device="cpu", arch="aarch64", vendor="unknown", isa="DEFAULT", cpu_bf16=True, amx=False)
H100 = dataclasses.replace(ZEN4, device="cuda", gpu_name="NVIDIA H100 80GB HBM3", gpu_bf16=True)
T4 = dataclasses.replace(AVX2_ZEN3, device="cuda", gpu_name="Tesla T4", gpu_bf16=False)


@pytest.mark.parametrize("caps, expected, because", [
    (AVX2_ZEN3, "none", "no AVX512-BF16/AMX"),
    (SKYLAKE_X, "none", "no AVX512-BF16/AMX"),  # AVX-512 without its bf16 extension: still emulated
    (ZEN4, "bf16", "has AVX512-BF16"),
    (SAPPHIRE_RAPIDS, "bf16", "has AMX"),
    (GRAVITON3, "bf16", "has BF16"),
    (H100, "bf16", "H100 80GB HBM3 has native bf16"),
    (T4, "none", "Tesla T4 has no native bf16"),
    (dataclasses.replace(ZEN4, device="mps"), "none", "not chosen automatically on mps"),
    # bf16 instructions present, but PyTorch told to run its AVX2 kernels (ATEN_CPU_CAPABILITY=avx2)
    (dataclasses.replace(ZEN4, isa="AVX2"), "none", "runs its AVX2 kernels"),
])
def test_auto_takes_bf16_only_where_the_device_computes_it(caps, expected, because):
    precision, why = resolve_precision("auto", caps)
    assert precision == expected and because in why and why.startswith("auto")


def test_explicit_choices_are_kept_and_say_when_slow():
    assert resolve_precision("none", ZEN4) == ("none", "requested")
    precision, why = resolve_precision("bf16", AVX2_ZEN3)
    assert precision == "bf16" and "slow here" in why
    assert resolve_precision("bf16", ZEN4) == ("bf16", "requested")
    assert resolve_precision("fp16", H100) == ("fp16", "requested")
    assert resolve_precision("fp16", ZEN4)[0] == "none"  # no fp16 autocast on a CPU


def test_trl_stages_resolve_bf16_auto_the_same_way():
    from detoxrl.schema import load_params
    from detoxrl.training.common import use_bf16

    sft = load_params("params.yaml").sft
    assert use_bf16(sft.model_copy(update={"bf16": "auto"}), ZEN4)[0] is True
    assert use_bf16(sft.model_copy(update={"bf16": "auto"}), AVX2_ZEN3)[0] is False
    assert use_bf16(sft.model_copy(update={"bf16": False}), ZEN4)[0] is False
    assert use_bf16(sft.model_copy(update={"bf16": True}), AVX2_ZEN3)[0] is True


def test_cpu_kind_separates_what_changes_the_bits():
    kinds = {cpu_kind(c) for c in (AVX2_ZEN3, ZEN4, SAPPHIRE_RAPIDS, SKYLAKE_X)}
    assert len(kinds) == 4
    assert cpu_kind(ZEN4) == "x86_64/AuthenticAMD/AVX512+bf16" and cpu_kind(AVX2_ZEN3) == "x86_64/AuthenticAMD/AVX2"
    record = hardware.platform_record(H100, "bf16", "auto: ...")
    assert record == {"device": "cuda", "cpu_kind": cpu_kind(H100), "gpu": "NVIDIA H100 80GB HBM3",
                      "precision": "bf16", "precision_reason": "auto: ..."}


@pytest.mark.slow
def test_detect_reads_this_machine_and_honours_a_lowered_kernel_level():
    import os
    import subprocess
    import sys

    import torch

    caps = hardware.detect("cpu")
    assert caps.device == "cpu" and caps.isa == torch.backends.cpu.get_cpu_capability()
    vendor, flags = hardware._cpu_flags()
    assert caps.vendor == vendor and caps.cpu_bf16 == bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    # PyTorch told to run its AVX2 kernels (how this suite plays an AVX2-only machine): auto resolves to fp32
    code = "from detoxrl import hardware as h; c = h.detect('cpu'); print(c.isa, h.resolve_precision('auto', c)[0])"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "ATEN_CPU_CAPABILITY": "avx2"},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["AVX2", "none"]
