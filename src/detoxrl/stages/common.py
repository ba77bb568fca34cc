"""What the stage entry points share: the typer options they all take, running a stage's app, model cards."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from .. import DetoxError, launch

ParamsOpt = typer.Option(Path("params.yaml"), "--params", help="Params file to read.")
BaseOpt = typer.Option(Path("models/base"), help="Base model directory (LoRA adapters load over it).")
EvalPromptsOpt = typer.Option(Path("data/processed/eval_prompts.jsonl"), help="Held-out eval prompts.")
TrainPairsOpt = typer.Option(Path("data/processed/pref_train.jsonl"), help="Training preference pairs.")
ValPairsOpt = typer.Option(Path("data/processed/pref_val.jsonl"), help="Validation preference pairs.")
TestPairsOpt = typer.Option(Path("data/processed/pref_test.jsonl"), help="Held-out preference pairs.")
SeedOpt = typer.Option(None, "--seed", help="Training seed (default: the block's `seed`); outputs default to "
                                            "<method>/s<seed>.")
CardsDirOpt = typer.Option(Path("metrics/cards"), help="Where the model card goes (a committed experiment: "
                           "experiments/results/cards, outside the report stage's deps).")
# The seeded online methods' outputs (grpo, rloo, kto): each defaults to <kind>/s<seed>.
OutOpt = typer.Option(None, help="Output model directory (default models/<method>/s<seed>).")
MetricsOpt = typer.Option(None, help="Metrics file (default metrics/<method>/s<seed>.json).")
PlotsOpt = typer.Option(None, help="Training curves (dvclive) directory (default plots/<method>/s<seed>).")
ModelDirOpt = typer.Option(None, "--model-dir", help="The model's directory, for a model not in params.yaml `models` "
                                                      "(a committed experiment, e.g. ppo_cvar).")


def stage_app(help: str) -> typer.Typer:
    """The typer app of one stage module (one command)."""
    return typer.Typer(help=help, pretty_exceptions_enable=False, add_completion=False)


def run(app: typer.Typer, name: str, argv: list[str]) -> None:
    """Run a stage's app as `detoxrl <name> <argv>`: a DetoxError is one line on stderr and exit status 1."""
    try:
        app(args=argv, prog_name=f"detoxrl {name}")
    except DetoxError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    finally:
        launch.end_processes()


def load(path: Path, *method_blocks):
    """The shared blocks of params.yaml and the given method blocks (a method module's `BLOCKS`), validated: a stage
    reads these and imports no other method's schema (params.load_blocks; the whole file is the check_params
    stage's)."""
    from ..params import load_blocks

    return load_blocks(path, *method_blocks)


def card(name: str, method: str, cards_dir: Path = Path("metrics/cards"), **fields) -> None:
    """Write the model card of what this stage made (the main process only): metrics/cards/<name>.json."""
    from ..cards import make_card, write_card

    if launch.rank() == 0:
        write_card(make_card(name, method, **fields), cards_dir)


def read_card(name: str) -> dict:
    from ..cards import read_card as read

    return read(name)


def out_name(out: Path) -> str:
    """The model's name in the report and on its card: models/sft -> sft, models/sft_seeds/s1 -> sft_seeds/s1."""
    return out.relative_to("models").as_posix() if out.is_relative_to("models") else out.name


def own_checkpoints(knobs, name: str, default: str):
    """The block's knobs, checkpointing beside the block's `checkpoint_dir` in a directory of its own when the run
    is not the stage's default model (a seed of a committed experiment: .cache/checkpoints/sft_seeds_s1), so that
    it never resumes, nor discards, another run's checkpoints."""
    if name == default:
        return knobs
    own = Path(knobs.checkpoint_dir).with_name(name.replace("/", "_"))
    return knobs.model_copy(update={"checkpoint_dir": str(own)})


def model_dir(params, name: str, model_dir: Path | None = None) -> Path:
    """A model's directory: --model-dir where given (a model outside `models`), else its `models:`/`seeded:` entry."""
    if model_dir is not None:  # a model outside `models` (a committed experiment, experiments/dvc.yaml)
        return model_dir
    from ..params import instances

    models = instances(params)
    if name not in models:
        raise DetoxError(f"model {name!r} is not in params.yaml `models` or a seed of `seeded` ({', '.join(models)}); "
                         "a model outside them needs --model-dir")
    return Path(models[name])
