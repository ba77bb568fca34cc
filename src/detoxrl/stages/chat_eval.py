"""chat_eval: a model answers held-out ToxicChat user inputs in chat format; toxicity and refusal rate."""

from __future__ import annotations

from pathlib import Path

import typer

from .. import launch
from . import common

app = common.stage_app(__doc__)


@app.command()
def chat_eval(
    model: str = typer.Argument(..., help="A model name from params.yaml `models`."),
    params: Path = common.ParamsOpt,
    prompts: Path = typer.Option(Path("data/chat/eval_prompts.jsonl"), help="Chat evaluation prompts."),
    base: Path = common.BaseOpt,
):
    """Answer held-out ToxicChat user inputs in chat format; toxicity of the answers and refusal rate."""
    from ..evaluation.chat_eval import chat_eval as run

    p = common.load(params)
    launch.relaunch(p, "chat_eval")  # > 1 process (chat_eval.compute, else compute): the prompts shared among processes
    r = run(model, common.model_dir(p, model), base, prompts, Path("data/chat/answers") / f"{model}.jsonl",
            Path("metrics/chat") / f"{model}.json", p)
    if launch.rank() != 0:
        return
    t = r["toxicity"]["overall"]
    typer.echo(f"{model}: chat answers, expected max toxicity {t['expected_max_toxicity']['value']:.3f} "
               f"({r['judge']}), refusal rate {r['refusal_rate']['overall']['value']:.3f}")
