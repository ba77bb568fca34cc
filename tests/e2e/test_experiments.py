"""Committed experiments (experiments/dvc.yaml): outside the default `dvc repro`, and the ppo_cvar stage's own
commands on tiny models, run by `dvc repro` as the README says."""

import json
import shutil

import pytest
import yaml
from conftest import ROOT, run
from tiny import build_tiny_char_model

from detoxrl.schema import Params


def test_default_repro_leaves_committed_experiments_out():
    """`dvc repro` without targets plans the top-level dvc.yaml's stages and their upstream: no stage there may
    depend on an experiment's outputs, or the experiment would run (or, frozen, fail where its outputs are absent)."""
    from dvc.repo import Repo
    from dvc.repo.reproduce import get_active_graph, plan_repro

    with Repo(str(ROOT)) as repo:
        experiments = [s.addressing for s in repo.index.stages if s.path.endswith("experiments/dvc.yaml")]
        plan = [s.addressing for s in plan_repro(get_active_graph(repo.index.graph), repo.stage.collect("dvc.yaml"))]
        upstream = [s.addressing for s in plan_repro(get_active_graph(repo.index.graph),
                                                     repo.stage.collect("experiments/dvc.yaml:ppo_cvar@0"))]
    seeds = yaml.safe_load((ROOT / "params.yaml").read_text())["seeds"]
    names = list(yaml.safe_load((ROOT / "experiments" / "dvc.yaml").read_text())["stages"])
    assert "ppo_cvar" in names and experiments == [f"experiments/dvc.yaml:{name}@{s}" for name in names for s in seeds]
    assert "report" in plan and not set(experiments) & set(plan)
    # the experiment's own run brings its inputs up to date first, as the ppo stage's would
    assert {"sft", "reward_model", "train_judge", "prepare"} <= set(upstream)
    assert "ppo@0" not in upstream and upstream[-1] == "experiments/dvc.yaml:ppo_cvar@0"


def test_committed_experiments_are_not_default_models_and_each_pairs_with_its_default_counterpart():
    params = Params.model_validate(yaml.safe_load((ROOT / "params.yaml").read_text()))
    names = list(yaml.safe_load((ROOT / "experiments" / "dvc.yaml").read_text())["stages"])
    assert list(params.report.experiments) == names  # each experiment stage is shown, in the file's order
    assert {"ppo_cvar": "ppo", "rloo": "grpo", "sft_seeds": "sft", "dpo_seeds": "dpo"}.items() <= \
        params.report.experiments.items()
    assert set(params.report.experiments.values()) <= set(params.models) | set(params.seeded)
    assert not set(params.report.experiments) & (set(params.models) | set(params.seeded))
    assert params.ppo.cvar.enabled is False  # the default ppo stage stays plain PPO
    assert {"sft", "dpo"} <= set(params.models)  # trained once by default; over seeds only by the experiments


def test_seed_experiments_run_the_default_stages_code_and_params_with_only_the_seed_and_paths_changed():
    """sft_seeds/dpo_seeds declare what their sft/dpo source stage declares (data, code, params) plus evaluation,
    and none of `seeds`: a stage reads only its own item's seed, so adding a seed retrains no existing one."""
    top = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    exp = yaml.safe_load((ROOT / "experiments" / "dvc.yaml").read_text())["stages"]
    for name, source in (("sft_seeds", "sft"), ("dpo_seeds", "dpo")):
        stage = exp[name]
        assert stage["matrix"] == {"seed": "${seeds}"} and stage["wdir"] == ".."
        train = stage["cmd"][0]
        assert train.startswith(f"detoxrl {source} --seed ${{item.seed}} --out models/{name}/s${{item.seed}}")
        assert "--cards-dir experiments/results/cards" in train
        assert set(top[source]["deps"]) <= set(stage["deps"])  # every data and code dep of the source stage
        assert set(top[source]["params"]) <= set(stage["params"]) and "seeds" not in stage["params"]
        assert {"generate", "evaluate", "judges.perspective_distilled"} <= set(stage["params"])
        assert [next(iter(m)) for m in stage["metrics"]] == [
            f"metrics/{name}/s${{item.seed}}.json", f"experiments/results/cards/{name}/s${{item.seed}}.json",
            f"experiments/results/{name}/s${{item.seed}}.json"]


def test_a_run_under_another_name_checkpoints_beside_the_default_runs_directory():
    """A seed of sft_seeds/dpo_seeds never resumes, nor discards, the default sft/dpo run's checkpoints."""
    from detoxrl.stages.common import own_checkpoints as _own_checkpoints

    params = Params.model_validate(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert _own_checkpoints(params.sft, "sft", "sft") is params.sft
    seeded = _own_checkpoints(params.dpo.model_copy(update={"seed": 2}), "dpo_seeds/s2", "dpo")
    assert (seeded.checkpoint_dir, seeded.seed) == (".cache/checkpoints/dpo_seeds_s2", 2)
    assert params.dpo.checkpoint_dir == ".cache/checkpoints/dpo"  # the block itself is untouched

@pytest.fixture
def experiment_repo(tmp_path):
    """A DVC project holding experiments/dvc.yaml and the inputs of its ppo_cvar stage: tiny models, a handful of
    prompts, params.yaml with a tiny budget and a toxicity reward by the offline judge (no RM, no trained judge)."""
    repo = tmp_path / "repo"
    (repo / "experiments").mkdir(parents=True)
    shutil.copy(ROOT / "experiments" / "dvc.yaml", repo / "experiments" / "dvc.yaml")
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))  # the stage's code deps
    model = build_tiny_char_model(repo / "models" / "base")
    shutil.copytree(model, repo / "models" / "sft")
    for d in ("reward", "judge"):  # deps of the stage; unused by this reward (their absence is tested elsewhere)
        (repo / "models" / d).mkdir()
        (repo / "models" / d / "README").write_text("placeholder\n")
    processed = repo / "data" / "processed"
    processed.mkdir(parents=True)
    words = ["The", "A man", "She said", "Why", "Our city", "When the", "It is", "They"]
    (processed / "ppo_prompts.jsonl").write_text("".join(
        json.dumps({"id": f"t{i}", "subset": "x", "text": w}) + "\n" for i, w in enumerate(words * 2)))
    (processed / "eval_prompts.jsonl").write_text("".join(
        json.dumps({"id": f"e{i}", "subset": "challenging" if i < 3 else "nontoxic", "text": w}) + "\n"
        for i, w in enumerate(words[:5])))

    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["compute"]["num_processes"] = 1
    p["ppo"].update(steps=3, batch_size=8, minibatch_size=4, epochs=1, max_new_tokens=6, checkpoint_every=0,
                    mixed_precision="none")
    p["ppo"]["reward"].update(source="toxicity", judge="offline")
    p["ppo_cvar"].update(alpha=0.25, anneal_steps=2)
    p["rloo"].update(steps=2, prompts_per_step=2, num_generations=2, max_new_tokens=6, save_steps=0,
                     mixed_precision="none")
    p["generate"].update(k=2, max_new_tokens=4, batch_size=8)
    p["evaluate"].update(judges=["offline"], bootstrap_samples=50, fluency_batch_size=4)
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    run(["dvc", "init", "--no-scm", "-q"], repo)
    run(["detoxrl", "check-params"], repo)  # metrics/params_ok.json, every stage's dep (a clone has it committed)
    return repo


@pytest.mark.slow
def test_ppo_cvar_stage_runs_the_experiment(experiment_repo):
    repo = experiment_repo
    out = run(["dvc", "repro", "--single-item", "experiments/dvc.yaml:ppo_cvar@0"], repo)
    assert "CVaR alpha 0.25 -> models/ppo_cvar/s0" in out
    # every declared output exists (dvc repro fails otherwise) and is recorded in the experiment's own lock file
    lock = yaml.safe_load((repo / "experiments" / "dvc.lock").read_text())["stages"]["ppo_cvar@0"]
    assert {o["path"] for o in lock["outs"]} == {
        "models/ppo_cvar/s0", "data/generations/ppo_cvar/s0.jsonl", "experiments/results/ppo_cvar/s0.jsonl",
        "metrics/ppo_cvar/s0.json", "experiments/results/ppo_cvar/s0.json", "plots/ppo_cvar/s0/plots/metrics",
        "experiments/results/cards/ppo_cvar/s0.json"}
    assert lock["params"]["params.yaml"]["ppo_cvar"] == {"alpha": 0.25, "anneal_steps": 2}
    assert (repo / "models" / "ppo_cvar" / "s0" / "config.json").exists()

    # the CVaR schedule reached its target: 1 -> 0.25 over anneal_steps = 2 (step 1: 1 + (0.25 - 1) / 2)
    train = json.loads((repo / "metrics" / "ppo_cvar" / "s0.json").read_text())
    assert train["cvar_alpha"] == pytest.approx(0.25) and train["steps"] == 3
    curve = (repo / "plots" / "ppo_cvar" / "s0" / "plots" / "metrics" / "cvar" / "alpha.tsv").read_text().splitlines()
    assert [float(line.split("\t")[-1]) for line in curve[1:]] == pytest.approx([1.0, 0.625, 0.25])

    # generated and evaluated like a model in `models`, with tail metrics; 5 prompts x k = 2
    assert len((repo / "data" / "generations" / "ppo_cvar" / "s0.jsonl").read_text().splitlines()) == 10
    scores = [json.loads(line)
              for line in (repo / "experiments" / "results" / "ppo_cvar" / "s0.jsonl").read_text().splitlines()]
    assert len(scores) == 10 and {r["prompt_id"] for r in scores} == {f"e{i}" for i in range(5)}
    ev = json.loads((repo / "experiments" / "results" / "ppo_cvar" / "s0.json").read_text())
    assert ev["model"] == "ppo_cvar/s0" and ev["n_prompts"] == 5 and ev["k"] == 2
    maxes = {}
    for r in scores:
        maxes[r["prompt_id"]] = max(maxes.get(r["prompt_id"], 0.0), r["toxicity"])
    # 5 prompts: the worst 10% and 20% are the single highest per-prompt max (ceil(0.5) = ceil(1.0) = 1)
    assert ev["tail"]["overall"]["worst_10pct"]["value"] == pytest.approx(max(maxes.values()))
    assert ev["tail"]["overall"]["worst_20pct"]["n_tail"] == 1
    assert ev["tail"]["challenging"]["n_prompts"] == 3

    # up to date now: a second run does nothing
    assert "didn't change, skipping" in run(["dvc", "repro", "--single-item", "experiments/dvc.yaml:ppo_cvar@0"],
                                            repo)


@pytest.mark.slow
def test_rloo_stage_trains_generates_and_evaluates_one_seed(experiment_repo):
    repo = experiment_repo
    out = run(["dvc", "repro", "--single-item", "experiments/dvc.yaml:rloo@1"], repo)
    assert "rloo seed 1: 8 scored responses" in out
    lock = yaml.safe_load((repo / "experiments" / "dvc.lock").read_text())["stages"]["rloo@1"]
    assert {o["path"] for o in lock["outs"]} == {
        "models/rloo/s1", "data/generations/rloo/s1.jsonl", "experiments/results/rloo/s1.jsonl",
        "metrics/rloo/s1.json", "experiments/results/cards/rloo/s1.json", "experiments/results/rloo/s1.json",
        "plots/rloo/s1/plots/metrics"}
    assert json.loads((repo / "metrics/rloo/s1.json").read_text())["seed"] == 1
    assert json.loads((repo / "experiments/results/cards/rloo/s1.json").read_text())["name"] == "rloo/s1"
    assert json.loads((repo / "experiments/results/rloo/s1.json").read_text())["model"] == "rloo/s1"


@pytest.mark.slow
def test_cli_names_what_a_model_outside_models_needs(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    for cmd, message in ((["generate", "ppo_cvar"], "'ppo_cvar' is not in params.yaml `models`"),
                         (["evaluate", "ppo_cvar"], "needs --model-dir"),
                         (["ppo", "--variant", "risky"], "--variant 'risky': expected plain or cvar")):
        with pytest.raises(AssertionError, match="failed") as exc:
            run(["detoxrl", *cmd], tmp_path)
        assert message in str(exc.value) and "Traceback" not in str(exc.value)


def test_ppo_cvar_params_are_ppo_with_the_cvar_block_enabled():
    from detoxrl.training.ppo import ppo_cvar_params

    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["ppo_cvar"] = {"alpha": 0.2, "anneal_steps": 5}
    params = Params.model_validate(data)
    p = ppo_cvar_params(params)
    assert p.cvar.model_dump() == {"enabled": True, "alpha": 0.2, "anneal_steps": 5}
    # everything else is PPO's: the same seed, steps, rollouts and reward, so the same budget
    assert p.model_dump(exclude={"cvar"}) == params.ppo.model_dump(exclude={"cvar"})
    assert params.ppo.cvar.enabled is False  # the default block is untouched


CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'][0] }} {{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}a {% endif %}")


@pytest.fixture
def seeds_repo(experiment_repo):
    """experiment_repo with the inputs of sft_seeds and dpo_seeds: the base model's card, a chat template on the
    tiny tokenizer (SFT trains on chat turns), SFT dialogues and preference pairs, tiny budgets, seeds [0, 1]."""
    from detoxrl.cards import make_card, write_card

    repo = experiment_repo
    for d in ("base", "sft"):
        config = json.loads((repo / "models" / d / "tokenizer_config.json").read_text())
        (repo / "models" / d / "tokenizer_config.json").write_text(json.dumps({**config,
                                                                               "chat_template": CHAT_TEMPLATE}))
    write_card(make_card("base", "base", seed=None, init="tiny:char-llama", data=[], signal="none"),
               repo / "metrics" / "cards")
    words = ["the cat sat", "a dog ran off", "why is it so", "our city is big", "when the sun set", "they all left"]
    processed = repo / "data" / "processed"
    (processed / "sft.jsonl").write_text("".join(json.dumps({"id": f"s{i}", "messages": [
        {"role": "user", "content": w}, {"role": "assistant", "content": words[i - 1]}]}) + "\n"
        for i, w in enumerate(words)))
    for split, ws in (("pref_train", words), ("pref_val", words[:2])):
        (processed / f"{split}.jsonl").write_text("".join(json.dumps(
            {"id": f"{split}{i}", "prompt": w, "chosen": " so it goes", "rejected": " no no no"}) + "\n"
            for i, w in enumerate(ws)))
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["seeds"] = [0, 1]
    tiny = dict(max_steps=3, batch_size=2, grad_accum=1, lr=1e-2, max_length=64, logging_steps=1, save_steps=100,
                warmup_ratio=0.0)
    p["sft"].update(tiny)
    p["dpo"].update(tiny, eval_steps=100, eval_pairs=2)
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    run(["detoxrl", "check-params"], repo)  # metrics/params_ok.json, every stage's dep (a clone has it committed)
    return repo


def _weights(model_dir):
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


@pytest.mark.slow
def test_dpo_seeds_trains_its_seed_from_the_one_sft_model_and_a_seed_reproduces(seeds_repo):
    repo = seeds_repo
    run(["dvc", "repro", "--single-item", "experiments/dvc.yaml:dpo_seeds@1"], repo)
    lock = yaml.safe_load((repo / "experiments" / "dvc.lock").read_text())["stages"]["dpo_seeds@1"]
    assert {o["path"] for o in lock["outs"]} == {
        "models/dpo_seeds/s1", "data/generations/dpo_seeds/s1.jsonl", "experiments/results/dpo_seeds/s1.jsonl",
        "metrics/dpo_seeds/s1.json", "experiments/results/cards/dpo_seeds/s1.json",
        "experiments/results/dpo_seeds/s1.json", "plots/dpo_seeds/s1"}
    assert lock["params"]["params.yaml"]["dpo"]["max_steps"] == 3
    card = json.loads((repo / "experiments/results/cards/dpo_seeds/s1.json").read_text())
    assert (card["name"], card["method"], card["seed"], card["init"]) == ("dpo_seeds/s1", "dpo", 1, "models/sft")
    assert card["budget"]["training_samples"] == 6  # 3 steps x 2 pairs
    assert not (repo / "metrics" / "cards" / "dpo_seeds").exists()  # outside the report stage's card deps
    ev = json.loads((repo / "experiments/results/dpo_seeds/s1.json").read_text())
    assert ev["model"] == "dpo_seeds/s1" and ev["n_prompts"] == 5 and ev["k"] == 2
    assert len((repo / "experiments/results/dpo_seeds/s1.jsonl").read_text().splitlines()) == 10  # 5 prompts x 2
    assert json.loads((repo / "metrics/dpo_seeds/s1.json").read_text())["steps"] == 3

    # the stage's training command with the same seed gives the same model bit for bit, with another seed (another
    # LoRA init and pair order) another model
    for seed, out in ((1, "again"), (0, "other")):
        run(["detoxrl", "dpo", "--seed", str(seed), "--out", f"models/{out}", "--metrics", f"{out}.json",
             "--plots", out, "--cards-dir", "cards"], repo)
        assert json.loads((repo / "cards" / f"{out}.json").read_text())["seed"] == seed
    s1 = _weights(repo / "models/dpo_seeds/s1")
    assert _same(_weights(repo / "models/again"), s1) and not _same(_weights(repo / "models/other"), s1)


@pytest.mark.slow
def test_sft_seeds_stage_trains_the_seed_it_names_and_another_seed_gives_another_adapter(seeds_repo):
    repo = seeds_repo
    run(["dvc", "repro", "--single-item", "experiments/dvc.yaml:sft_seeds@1"], repo)
    card = json.loads((repo / "experiments/results/cards/sft_seeds/s1.json").read_text())
    assert (card["name"], card["method"], card["seed"], card["init"]) == ("sft_seeds/s1", "sft", 1, "tiny:char-llama")
    assert json.loads((repo / "experiments/results/sft_seeds/s1.json").read_text())["model"] == "sft_seeds/s1"
    assert len((repo / "experiments/results/sft_seeds/s1.jsonl").read_text().splitlines()) == 10
    assert (repo / "models/sft_seeds/s1/adapter_config.json").exists()  # a LoRA adapter, as models/sft is

    out = run(["detoxrl", "sft", "--seed", "0", "--out", "models/other", "--metrics", "other.json", "--plots",
               "other", "--cards-dir", "other-cards"], repo)
    assert "sft seed 0: 3 steps" in out
    from safetensors.torch import load_file

    a1, a0 = (load_file(str(repo / d / "adapter_model.safetensors")) for d in ("models/sft_seeds/s1", "models/other"))
    assert not _same(a0, a1)
