"""The pipeline's stages: one module a stage, each the whole entry point of what dvc.yaml's `cmd` runs.

`detoxrl <stage> ...` (dvc.yaml) runs `stages/<stage>.py` alone (entry.py dispatches on the name, `-` read as `_`):
a stage imports its own module, what that module imports, and nothing of the human CLI (cli.py), so editing a user
command, a tool or another stage's module reruns no stage. Each module holds a typer `app` with one command.
"""
