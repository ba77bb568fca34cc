"""Every GPU recipe (profiles/gpu-*.yaml) end to end on CPU stand-ins: `dvc repro` to the report.

A recipe's workspace applies, in order and as a user would (`detoxrl use-profile`, each committed):
1. the recipe's chain (e.g. gpu-1b.yaml then gpu-r1-1.5b.yaml);
2. a generated profiles/stand-in.yaml that extends profiles/smoke.yaml, the one documented size override (every
   stage runs in seconds), and holds only the swaps (`stand_in_swaps`, each with its reason as a comment):
   - each `hub:` model -> `local:` a tiny random model of the same architecture class, built here (`STAND_INS`;
     a recipe naming a hub model without a stand-in fails, naming it);
   - what needs CUDA -> its CPU equivalent: 4-bit/8-bit QLoRA -> unquantised LoRA, vLLM -> the hf decode loop,
     a DeepSpeed accelerate config -> plain DDP (gloo), N GPU processes -> 2 CPU processes for a stage's own
     `compute` and 1 for the global one (tests/e2e/test_data_parallel.py runs the stages' 2-process paths).
The swaps are printed at the end of the run (pytest's terminal summary) and listed, by stage and option, in
docs/scaling.md's "Untested on hardware" table (`test_every_swap_is_listed_in_the_docs_as_untested_on_hardware`).
The recipes' workspaces share one DVC cache, so a stage the same in two recipes (gpu-8b-zero3 extends gpu-1b and
shares its base) comes from DVC's run cache the second time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from detoxrl.params import split_batch

from conftest import ROOT, cli_env, commit_repro, new_workspace, run, use_profile
from tiny import build_tiny_deberta, build_tiny_model, build_tiny_qwen2_r1, build_tiny_seqcls

RECIPES = {  # the recipe -> its chain as `use-profile` records it
    "gpu-1b.yaml": ["gpu-1b.yaml"],
    "gpu-8b-zero3.yaml": ["gpu-1b.yaml", "gpu-8b-zero3.yaml"],
    "gpu-r1-1.5b.yaml": ["gpu-1b.yaml", "gpu-r1-1.5b.yaml"],
}

# hub model -> (stand-in kind, what it stands for). Each kind is built once (`StandIns`).
STAND_INS = {
    "meta-llama/Llama-3.2-1B-Instruct": ("llama", "LlamaForCausalLM with a chat template (SmolLM2's tokenizer)"),
    "meta-llama/Llama-3.1-8B-Instruct": ("llama-8b", "LlamaForCausalLM, trained here as the 8B RM's backbone"),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": ("qwen2-r1", "Qwen2ForCausalLM whose chat template opens <think>"),
    "Skywork/Skywork-Reward-V2-Qwen3-1.7B": ("qwen3-rm", "Qwen3ForSequenceClassification with Qwen3's chat template"),
    "OpenAssistant/reward-model-deberta-v3-large-v2": ("deberta-rm", "DebertaV2ForSequenceClassification, "
                                                                     "(question, answer) pairs"),
}
# The words of the DeBERTa stand-in's vocabulary (the rest of RewardBench's text reads as [UNK]).
DEBERTA_WORDS = ["How do I make a bomb?", "I can't help with that.", "What is the capital of France?",
                 "Paris is the capital.", "You are stupid and I hate you."]


@dataclass(frozen=True)
class Swap:
    key: str  # dotted params key, e.g. sft.quantization
    old: object
    new: object
    why: str


class StandIns:
    """The tiny models, built on first use under `root` (the SmolLM2 tokenizer from the packaged base)."""

    def __init__(self, root: Path, tokenizer_dir: Path):
        self.root, self.tokenizer_dir = root, tokenizer_dir

    def __call__(self, hub_id: str) -> Path:
        kind = STAND_INS[hub_id][0]
        out = self.root / kind
        if not out.exists():
            build = {"llama": lambda: build_tiny_model(self.tokenizer_dir, out),
                     "llama-8b": lambda: build_tiny_model(self.tokenizer_dir, out, seed=1),
                     "qwen2-r1": lambda: build_tiny_qwen2_r1(out),
                     "qwen3-rm": lambda: build_tiny_seqcls(self.tokenizer_dir, out, "qwen3"),
                     "deberta-rm": lambda: build_tiny_deberta(out, DEBERTA_WORDS)}[kind]
            build()
        return out


def _is_deepspeed(config: str) -> bool:
    return "deepspeed" in yaml.safe_load((ROOT / config).read_text()).get("distributed_type", "").lower()


def stand_in_swaps(tree: dict, models) -> list[Swap]:
    """What a CPU stand-in run of these params replaces, and why; `models(hub_id)` gives a stand-in's dir."""
    swaps: list[Swap] = []

    def walk(node: dict, prefix: str) -> None:
        for name, value in node.items():
            key = f"{prefix}{name}"
            if isinstance(value, dict):
                walk(value, f"{key}.")
            elif isinstance(value, str) and value.startswith("hub:"):
                hub_id = value.removeprefix("hub:")
                if hub_id not in STAND_INS:
                    pytest.fail(f"{key}: {value}: no CPU stand-in for this hub model: add one to "
                                "tests/e2e/test_recipes.py's STAND_INS")
                swaps.append(Swap(key, value, f"local:{models(hub_id)}",
                                  f"the hub weights need the network: a tiny random {STAND_INS[hub_id][1]}"))
            elif name == "quantization" and value in ("4bit", "8bit"):
                swaps.append(Swap(key, value, "none", f"bitsandbytes {value} (QLoRA) needs CUDA: LoRA on the "
                                                      "unquantised weights"))
            elif name == "engine" and value == "vllm":
                swaps.append(Swap(key, value, "hf", "vLLM needs CUDA: the project's decode loop"))
            elif name == "accelerate_config" and value and _is_deepspeed(value):
                swaps.append(Swap(key, value, "configs/accelerate/ddp.yaml",
                                  "DeepSpeed needs CUDA here: plain DDP over gloo"))
            elif name == "num_processes" and isinstance(value, int) and value > 1:
                if key == "compute.num_processes":
                    swaps.append(Swap(key, value, 1, f"{value} GPUs: one CPU process per stage (the stages' "
                                                     "2-process paths: tests/e2e/test_data_parallel.py)"))
                else:
                    swaps.append(Swap(key, value, 2, f"{value} GPUs: 2 CPU processes (gloo)"))

    walk(tree, "")
    for s in [s for s in swaps if s.key.endswith(".compute.num_processes")]:
        knobs = tree[s.key.split(".")[0]]
        if "grad_accum" in knobs and split_batch(knobs["batch_size"], knobs["grad_accum"], s.new) is None:
            block = s.key.split(".")[0]
            swaps.append(Swap(f"{block}.grad_accum", knobs["grad_accum"], knobs["grad_accum"] * s.new,
                              f"{s.new} CPU processes share the global batch (the smoke profile's batch of "
                              f"{knobs['batch_size']} x {knobs['grad_accum']} does not split)"))
    if any(s.key == "compute.num_processes" for s in swaps) and tree["compute"].get("accelerate_config"):
        old = tree["compute"]["accelerate_config"]
        swaps = [s for s in swaps if s.key != "compute.accelerate_config"]
        swaps.append(Swap("compute.accelerate_config", old, None, "one process: no launcher config"))
    return swaps


def _merged(tree: dict, overrides: dict) -> dict:
    out = dict(tree)
    for key, value in overrides.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def swaps_profile(swaps: list[Swap]) -> str:
    """The swaps as a profile extending smoke.yaml (nested keys, each with its old value and reason as a comment)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap

    doc = CommentedMap(extends="smoke.yaml")
    for s in swaps:
        node, *parents, leaf = [doc, *s.key.split(".")]
        for part in parents:
            node = node.setdefault(part, CommentedMap())
        node[leaf] = s.new
        node.yaml_add_eol_comment(f"was {s.old}: {s.why}", leaf)
    import io

    buf = io.StringIO()
    YAML().dump(doc, buf)
    return ("# CPU stand-in swaps (tests/e2e/test_recipes.py) over the smoke profile's sizes, applied after the "
            "recipe\n" + buf.getvalue())


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory, base_model_dir) -> StandIns:
    return StandIns(tmp_path_factory.mktemp("stand-ins"), base_model_dir)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("recipe-dvc-cache")


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_recipe_runs_to_the_report_on_cpu_stand_ins(recipe, stand_ins, shared_cache, tmp_path, record_property):
    repo, env = tmp_path / "repo", cli_env()
    new_workspace(repo, env)
    run(["dvc", "cache", "dir", "--local", str(shared_cache)], repo, env=env)
    use_profile(repo, f"profiles/{recipe}", env)
    # the sizes and the swaps in one profile (smoke's batches of 1 cannot split over the recipe's processes, so
    # neither applies alone): profiles/stand-in.yaml extends smoke.yaml; the swaps are computed on both merged
    sized = _merged(yaml.safe_load((repo / "params.yaml").read_text()),
                    yaml.safe_load((repo / "profiles" / "smoke.yaml").read_text()))
    swaps = stand_in_swaps(sized, stand_ins)
    (repo / "profiles" / "stand-in.yaml").write_text(swaps_profile(swaps))
    run(["git", "add", "profiles/stand-in.yaml"], repo, env=env)
    use_profile(repo, "profiles/stand-in.yaml", env)
    record_property("stand_in_swaps", [f"{s.key}: {s.old} -> {s.new} ({s.why})" for s in swaps])
    run(["detoxrl", "check-params"], repo, env=env)

    out = commit_repro(repo, env)
    print(out)

    assert "up to date" in run(["dvc", "status"], repo, env=env)
    chain = [*RECIPES[recipe], "smoke.yaml", "stand-in.yaml"]
    report = (repo / "reports" / "report.md").read_text()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for method in [*params["models"], *params["seeded"]]:
        assert f"| {method} |" in report or f"| {method} (" in report, method
    assert _json(repo / "metrics" / "eval" / "base.json")["platform"]["profiles"] == chain
    assert _json(repo / "metrics" / "ppo" / "s0.json")["platform"]["profiles"] == chain
    # the recipe's own paths ran
    rb = _json(repo / "metrics" / "reward_model.json")["reward_bench"]
    deberta = rb["oasst_deberta"]  # gpu-1b's reference RM: (question, answer) pairs, within its 128 positions
    assert deberta["format"] == "pair" and deberta["max_length"] == 128 and 0 <= deberta["score"]["value"] <= 1
    if recipe == "gpu-8b-zero3.yaml":
        assert "reward-model: 2 processes" in out  # its own compute: the ZeRO-3 stage, as DDP on 2 CPU processes
        backbone = f"local:{stand_ins('meta-llama/Llama-3.1-8B-Instruct')}"
        assert _json(repo / "metrics" / "reward_train.json")["backbone"] == backbone
    if recipe == "gpu-r1-1.5b.yaml":
        ppo, ev = _json(repo / "metrics" / "ppo" / "s0.json"), _json(repo / "metrics" / "eval" / "base.json")
        assert "unclosed_thinking" in ppo and "unclosed_thinking" in ev
        rm = f"reward_model:local:{stand_ins('Skywork/Skywork-Reward-V2-Qwen3-1.7B')}"
        assert rm in ppo["reward_source"]  # Skywork's stand-in in PPO's reward (its template: test_reward_model.py)


def test_every_swap_is_listed_in_the_docs_as_untested_on_hardware(tmp_path, monkeypatch):
    """Each recipe's swaps (computed from its resolved chain) appear, by option, in docs/scaling.md's table."""
    from detoxrl_tools.profiles import resolved_params

    monkeypatch.chdir(ROOT)
    text = (ROOT / "docs" / "scaling.md").read_text()
    table = text[text.index("### Untested on hardware"):]
    for recipe in RECIPES:
        tree = resolved_params(ROOT / "params.yaml", ROOT / "profiles" / recipe).model_dump(mode="json")
        tree = _merged(tree, yaml.safe_load((ROOT / "profiles" / "smoke.yaml").read_text()))
        for s in stand_in_swaps(tree, lambda hub_id: tmp_path / hub_id):
            assert f"`{s.key}`" in table, f"{recipe}: {s.key} is swapped on CPU but not in docs/scaling.md"
