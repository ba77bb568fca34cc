"""A guard against tensors made on an implicit device: inside `ExplicitDevice()`, a tensor factory (zeros, ones,
full, empty, arange, tensor, randperm, rand*, ...) or a torch.Generator called from this project's code without
`device=` raises. On a CPU everything works either way, which is how a CPU-only test suite let rollout tensors be
built on the CPU while the policy sat on a GPU; under this guard that code fails on the CPU too. Library code
(transformers, peft, accelerate, tokenizers) is not checked: only frames in src/detoxrl."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

SRC = str(Path(__file__).resolve().parents[2] / "src" / "detoxrl")  # tests/support/ -> the project root
TORCH_DISPATCH = str(Path(torch.__file__).parent / "overrides.py")
FACTORIES = {torch.zeros, torch.ones, torch.full, torch.empty, torch.arange, torch.tensor, torch.as_tensor,
             torch.randperm, torch.rand, torch.randn, torch.randint, torch.eye, torch.linspace}


class ExplicitDevice(TorchFunctionMode):
    def __init__(self, watch: tuple[str, ...] = (SRC,)):
        super().__init__()
        self.watch = watch  # files or folders whose calls are checked
        self.checked = 0  # factory calls from the watched code that passed the check

    def _ours(self) -> str | None:
        """Where the factory was called from, if that is watched code: the first frame outside this file and torch's
        dispatch (torch/overrides.py); a factory inside a library (nn.Linear's weights) is the library's."""
        frame = sys._getframe(1)
        while frame and frame.f_code.co_filename.startswith((__file__, TORCH_DISPATCH)):
            frame = frame.f_back
        name = frame.f_code.co_filename if frame else ""
        return f"{name}:{frame.f_lineno}" if name.startswith(self.watch) else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES:
            where = self._ours()
            if where:
                if kwargs.get("device") is None:
                    raise AssertionError(f"torch.{func.__name__} without an explicit device at {where}")
                self.checked += 1
        return func(*args, **kwargs)

    def __enter__(self):
        real = self._real_generator = torch.Generator
        ours = self._ours

        def Generator(device=None):  # torch.Generator is a class, which torch function modes do not see
            where = ours()
            if where and device is None:
                raise AssertionError(f"torch.Generator without an explicit device at {where}")
            return real(device) if device is not None else real()

        torch.Generator = Generator
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Generator = self._real_generator
        return super().__exit__(*exc)
