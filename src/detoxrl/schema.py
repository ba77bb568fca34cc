"""params.yaml's whole schema: the shared blocks (params.SharedParams) and every method's own blocks, with the
checks across blocks.

A method declares its blocks in its own module (`BLOCKS = {"sft": Block(SFTParams, "...")}` in training/sft.py);
this module collects them from every module of detoxrl.training, so adding a method adds its block here without an
edit. Read by `detoxrl check-params` (the pipeline's first stage: a bad value anywhere stops `dvc repro` before
anything trains), use-profile, plan and the docs. No other stage imports it: a stage loads the shared blocks and its
own (params.load_blocks), so editing one method's schema reruns that method's stages only.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError, create_model, model_validator

from . import DetoxError, training
from .params import Block, SharedParams, _format_error, _read, compute_problem, instances


def method_blocks() -> dict[str, Block]:
    """Every method module's blocks (the `BLOCKS` of each module of detoxrl.training, by module name): the registry
    of methods. A block name is declared once."""
    out: dict[str, Block] = {}
    for info in sorted(pkgutil.iter_modules(training.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{training.__name__}.{info.name}")
        for name, block in getattr(module, "BLOCKS", {}).items():
            if name in out or name in SharedParams.model_fields:
                raise ValueError(f"params block {name!r} declared twice ({module.__name__})")
            out[name] = block
    return out


def compute_blocks(model: type[BaseModel]) -> tuple[str, ...]:
    """The blocks with their own `compute:` sub-block: each names the stages that re-launch themselves under
    `accelerate launch` with that block's effective compute (params.stage_compute)."""
    return tuple(name for name, field in model.model_fields.items()
                 if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
                 and "compute" in field.annotation.model_fields)


class _Checked(SharedParams):
    @model_validator(mode="after")
    def _baseline_is_a_model(self):
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"seeds {self.seeds}: expected distinct non-negative integers, at least one")
        both = sorted(set(self.seeded) & set(self.models))
        if both or len(set(self.seeded)) != len(self.seeded):
            raise ValueError(f"seeded {self.seeded}: a name is listed twice or is also in models ({both})")
        unknown = [m for m in self.report.compare if m not in self.models]
        if unknown:
            raise ValueError(f"report.compare {unknown} are not among models: {sorted(self.models)}")
        for key in ("model_a", "model_b"):
            if getattr(self.human_eval, key) not in instances(self):
                raise ValueError(f"human_eval.{key} {getattr(self.human_eval, key)!r} is not one of the models: "
                                 f"{sorted(instances(self))}")
        if self.report.baseline not in self.models:
            raise ValueError(f"report.baseline {self.report.baseline!r} is not one of models: {sorted(self.models)}")
        both = sorted(set(self.report.experiments) & set(self.models))
        if both:  # the report pairs an experiment with its reference model where both were evaluated
            raise ValueError(f"report.experiments {both} are also in models (an experiment runs outside the default "
                             "stages)")
        for name, f in self.filters.items():
            if name in self.models:
                raise ValueError(f"filters.{name}: also a name in models (both write data/generations/{name}.jsonl)")
            if f.source not in self.models:
                raise ValueError(f"filters.{name}.source {f.source!r} is not one of models: {sorted(self.models)}")
            if f.model != self.models[f.source]:
                raise ValueError(f"filters.{name}.model {f.model!r} must be models.{f.source} "
                                 f"({self.models[f.source]!r}), the directory dvc.yaml makes the stage depend on")
        return self

    @model_validator(mode="after")
    def _compute_can_run(self):
        for block in compute_blocks(type(self)):
            problem = compute_problem(self, block)
            if problem:
                raise ValueError(problem)
        return self


METHOD_BLOCKS = method_blocks()
Params = create_model("Params", __base__=_Checked,
                      **{name: (block.type, Field(description=block.description))
                         for name, block in METHOD_BLOCKS.items()})
Params.__doc__ = "The whole of params.yaml: the shared blocks and every method's blocks."
COMPUTE_BLOCKS = compute_blocks(Params)


def load_params(path: str | Path = "params.yaml") -> Params:
    """params.yaml, every block validated, with the checks across blocks; one DetoxError line naming the key."""
    path = Path(path)
    raw = _read(path)
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise DetoxError(_format_error(path, exc)) from None
