"""detoxrl_tools: the developer tools of the project, kept outside the runtime package `detoxrl`.

The docs generator (docs_gen), the stage code deps (stage_code), the reproducibility check (repro_check), the
offline plots page (plots_page), the GPU memory plan (plan, with known_configs.yaml) and the profiles (profiles).
The user commands that run them (`detoxrl docs`, `stage-deps`, `check-repro`, `plots-template`, `plan`,
`use-profile`) stay in detoxrl/cli.py and import them lazily. No pipeline stage runs this package: a stage runs
src/detoxrl/stages/<stage>.py and its import closure inside src/detoxrl (stage_code), and no module of src/detoxrl
but cli.py imports detoxrl_tools (tests/unit/test_stage_deps.py checks it), so an edit here reruns no stage.
"""
