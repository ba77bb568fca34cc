"""check_params: params.yaml against the whole schema (every block, every method's, the checks across blocks).

The pipeline's first stage: every other stage depends on its output, so a bad value anywhere (`dvc exp run -S
ppo.lr=nan`) stops `dvc repro` here, with one line naming the key, before anything trains. Its output does not
change with the params (only its run does), so a changed param reruns this check and the stages that read it.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..io import write_json
from . import common

app = common.stage_app(__doc__)


@app.command()
def check_params(
    params: Path = common.ParamsOpt,
    out: Path = typer.Option(Path("metrics/params_ok.json"), help="Written once the file validates; the other "
                             "stages depend on it (its content never changes)."),
):
    """Validate a params file against the whole schema."""
    from ..schema import load_params

    load_params(params)
    write_json(out, {"params": "valid"})
    typer.echo(f"{params}: ok")
