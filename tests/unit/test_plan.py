"""`detoxrl plan`: the memory estimate against torch's measured peak on CPU, the profiles' plans, the errors.

The measured peak is the largest sum of live tensor storages during the step (weights included), tracked by a
TorchDispatchMode: each op's output storages are counted once by data pointer, and dropped once torch has freed them
(a weak reference to the storage has expired). The estimate must lie within a factor of 2 of it (0.5x - 2x).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from typer.testing import CliRunner

from detoxrl import DetoxError
from detoxrl.schema import Params
from detoxrl_tools import plan as mp
from detoxrl_tools.profiles import resolved_params

FACTOR = 2.0  # the estimate lies within [measured / FACTOR, measured * FACTOR]


class PeakStorage(TorchDispatchMode):
    """The peak of live tensor storage bytes while active, counting `start` tensors (weights) as live from the
    beginning."""

    def __init__(self, start=()):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = self.peak = 0
        for t in start:
            self._add(t)

    def _sweep(self):
        for ptr in [p for p, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(ptr)[1]

    def _add(self, t):
        if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
            return
        s = t.untyped_storage()
        ptr, n = s.data_ptr(), s.nbytes()
        if n == 0 or (ptr in self.live and not self.live[ptr][0].expired()):
            return
        if ptr in self.live:
            self.current -= self.live.pop(ptr)[1]
        self.live[ptr] = (StorageWeakRef(s), n)
        self.current += n
        self.peak = max(self.peak, self.current)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._sweep()
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            self._add(t)
        return out


def test_the_peak_tracker_counts_live_storage_and_its_frees():
    with PeakStorage() as m:
        a = torch.empty(1000, dtype=torch.float32)  # 4,000 bytes
        b = torch.zeros(500, dtype=torch.float64)  # 4,000 bytes
        del a
        c = b.view(10, 50) + 1  # a new 4,000-byte storage; the view of b is not one
        del b, c
        d = torch.ones(250)  # 1,000 bytes
    assert m.peak == 8000
    assert m.current == 1000 and d.numel() == 250


def _params(model_dir: Path, **blocks) -> Params:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["base_model"]["source"] = f"local:{model_dir}"
    for block, values in blocks.items():
        raw[block].update(values)
    return Params.model_validate(raw)


def _stage(params: Params, name: str) -> mp.StagePlan:
    return next(s for s in mp.plan_stages(params, root=ROOT) if s.stage == name)


def _weights(model):
    return list(model.parameters()) + list(model.buffers())


def _measure_train_step(model_dir: Path, params: Params) -> int:
    """Peak bytes of one SFT-like step: forward, the LM head on the scored positions, backward, AdamW."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    sft = params.sft
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if sft.lora.enabled:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=sft.lora.r, lora_alpha=sft.lora.alpha, lora_dropout=0.0,
                                                 target_modules=sft.lora.target_modules, task_type="CAUSAL_LM"))
        lm = model.get_base_model()
    else:
        lm = model
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, lm.config.vocab_size, (sft.batch_size, sft.max_length))
    with PeakStorage(_weights(model)) as m:
        hidden = lm.get_decoder()(input_ids=ids).last_hidden_state
        logits = lm.get_output_embeddings()(hidden[:, :-1]).float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
    return m.peak


def _measure_generation(model_dir: Path, params: Params) -> int:
    from transformers import AutoModelForCausalLM

    from detoxrl.evaluation.generate import sample_tokens

    g = params.generate
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompts = g.batch_size // g.k
    ids = torch.randint(0, model.config.vocab_size, (prompts, mp.PROMPT_TOKENS["raw"]))
    with PeakStorage(_weights(model)) as m:
        sample_tokens(model, ids, torch.ones_like(ids), g.k, g.max_new_tokens, g.temperature, g.top_p,
                      [model.config.vocab_size + 1], 0, torch.Generator().manual_seed(0))
    return m.peak


def _within(estimate: float, measured: int) -> None:
    assert measured / FACTOR <= estimate <= measured * FACTOR, f"estimate {estimate / 2**20:.1f} MiB, " \
        f"measured peak {measured / 2**20:.1f} MiB"


@pytest.fixture(scope="module")
def tiny_dir(base_model_dir, tmp_path_factory) -> Path:
    from tiny import build_tiny_model

    return build_tiny_model(base_model_dir, tmp_path_factory.mktemp("plan") / "tiny")


SFT_RUNS = {"lora": {"batch_size": 2, "max_length": 64},
            "full": {"batch_size": 2, "max_length": 64, "lora": {"enabled": False}}}


def _sft_params(model_dir: Path, run: str) -> Params:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    values = dict(SFT_RUNS[run])
    lora = {**raw["sft"]["lora"], **values.pop("lora", {})}
    return _params(model_dir, sft={**values, "lora": lora})


@pytest.mark.parametrize("run", ["lora", "full"])
def test_tiny_model_train_step_estimate_within_2x_of_measured_peak(tiny_dir, run):
    params = _sft_params(tiny_dir, run)
    _within(_stage(params, "sft").total, _measure_train_step(tiny_dir, params))


@pytest.mark.parametrize("run", ["lora", "full"])
def test_135m_model_train_step_estimate_within_2x_of_measured_peak(base_model_dir, run):
    params = _sft_params(base_model_dir, run)
    plan = _stage(params, "sft")
    assert plan.models[0].activations > plan.models[0].weights / 4  # the step exercises activations, not weights only
    _within(plan.total, _measure_train_step(base_model_dir, params))


@pytest.mark.parametrize("which", ["tiny", "135m"])
def test_generation_with_kv_cache_estimate_within_2x_of_measured_peak(tiny_dir, base_model_dir, which):
    model_dir = tiny_dir if which == "tiny" else base_model_dir
    params = _params(model_dir, generate={"batch_size": 16, "k": 4, "max_new_tokens": 16})
    _within(_stage(params, "generate").total, _measure_generation(model_dir, params))


def test_parameter_counts_match_the_loaded_models(tiny_dir, base_model_dir):
    from transformers import AutoModelForCausalLM

    for d in (tiny_dir, base_model_dir):
        arch = mp.resolve_arch(f"local:{d}", "base_model.source")
        model = AutoModelForCausalLM.from_pretrained(d)
        assert arch.params("lm") == sum(p.numel() for p in model.parameters())


def test_packaged_base_in_the_table_matches_its_materialised_config(base_model_dir):
    cfg = json.loads((base_model_dir / "config.json").read_text())
    known = mp.known_configs()["packaged:smollm2-135m-instruct"]
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size", "vocab_size", "tie_word_embeddings", "model_type"):
        assert known[key] == cfg[key], key


PROFILES = ["gpu-1b.yaml", "gpu-r1-1.5b.yaml", "gpu-8b-zero3.yaml"]
STAGES = ["sft", "dpo", "dpo_feedback", "reward_model", "eval_reward_model", "pref_eval", "ppo", "grpo", "rloo",
          "pref_gen", "generate", "evaluate", "chat_eval"]


@pytest.mark.parametrize("profile", PROFILES)
def test_plan_runs_for_each_gpu_profile_and_names_every_stage(profile, monkeypatch):
    from detoxrl.cli import app

    monkeypatch.chdir(ROOT)
    before = (ROOT / "params.yaml").read_text()
    result = CliRunner().invoke(app, ["plan", "--profile", f"profiles/{profile}"])
    assert result.exit_code == 0, result.output
    rows = {line.split("|")[1].strip() for line in result.output.splitlines() if line.startswith("| ")}
    assert set(STAGES) <= rows
    assert f"profiles: {' -> '.join(resolved_params(ROOT / 'params.yaml', ROOT / 'profiles' / profile).profiles)}" \
        in result.output
    assert "Estimate" in result.output
    assert (ROOT / "params.yaml").read_text() == before  # planned in memory


def _rm_plans(params: Params, **rm) -> tuple[mp.StagePlan, mp.StagePlan]:
    """The reward_model stage as the params shard it, and on one process without ZeRO."""
    if rm:
        params = params.model_copy(update={"reward_model": params.reward_model.model_copy(update=rm)})
    one = params.compute.model_copy(update={"num_processes": 1, "accelerate_config": None})
    alone = params.model_copy(update={"compute": one, "reward_model": params.reward_model.model_copy(
        update={"compute": params.reward_model.compute.model_copy(update={"num_processes": 1})})})
    return _stage(params, "reward_model"), _stage(alone, "reward_model")


def test_8b_reward_model_trained_in_full_fits_24gb_only_sharded_by_zero3_over_8_processes():
    params = resolved_params(ROOT / "params.yaml", ROOT / "profiles" / "gpu-8b-zero3.yaml")
    assert params.compute.num_processes == 8
    full = params.reward_model.lora.model_copy(update={"enabled": False})
    sharded, alone = _rm_plans(params, lora=full)
    assert sharded.sharding == "ZeRO-3 (offload)" and not alone.sharding
    # the RM's own compute (reward_model.compute) shards it; PPO, data-parallel over the same 8 processes, is not
    ppo = _stage(params, "ppo")
    assert ppo.processes == 8 and not ppo.sharding
    assert alone.models[0].params > 7e9  # the 8B backbone (less its LM head), not the 1B policy
    assert alone.total > 80 * mp.GIB  # 16 B/param of weights, gradients and AdamW states: an H200 at least
    assert sharded.total <= 24 * mp.GIB
    # ZeRO-3 with offload keeps two gathered layers of weights and no optimizer state on each GPU
    assert sharded.models[0].weights < alone.models[0].weights / 8
    assert sharded.models[0].states < alone.models[0].states / 8


def test_8b_reward_model_with_lora_as_the_profile_trains_it_shrinks_per_gpu_under_zero3():
    params = resolved_params(ROOT / "params.yaml", ROOT / "profiles" / "gpu-8b-zero3.yaml")
    sharded, alone = _rm_plans(params)
    assert sharded.total < alone.total
    assert alone.models[0].weights > 14 * mp.GIB * 0.9  # the bf16 8B weights, unsharded
    # per process: the global batch (4 x 4 pairs) split over 8 processes -> 2 pairs = 4 sequences each
    assert sharded.models[0].note.startswith("4 x ") and alone.models[0].note.startswith("8 x ")


def test_a_stage_that_fits_no_gpu_says_how_many_zero3_processes_it_needs():
    params = resolved_params(ROOT / "params.yaml", ROOT / "profiles" / "gpu-8b-zero3.yaml")
    one = params.compute.model_copy(update={"num_processes": 1, "accelerate_config": None})
    rm = params.reward_model.model_copy(update={"batch_size": 64, "grad_accum": 1, "gradient_checkpointing": False,
                                                "lora": params.reward_model.lora.model_copy(
                                                    update={"enabled": False}),
                                                "compute": one})  # one process, no ZeRO: its own and the global
    big = params.model_copy(update={"reward_model": rm, "compute": one})
    out = mp.table(mp.plan_stages(big, root=ROOT), big, root=ROOT)
    line = [ln for ln in out.splitlines() if ln.startswith("| | **total**")][3]  # reward_model's total
    assert "none; ZeRO-3 over" in line
    need = int(line.split("ZeRO-3 over ")[1].split(" x")[0])
    assert need >= 2


def test_unknown_hub_model_gives_one_line_naming_the_param(tmp_path):
    params = _params(tmp_path)  # a local dir with no config.json
    with pytest.raises(DetoxError, match=r"^base_model.source: .*no config.json") as err:
        mp.plan_stages(params, root=ROOT)
    assert "\n" not in str(err.value)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["reward_model"]["backbone"] = "hub:nobody/unknown-rm"
    with pytest.raises(DetoxError, match=r"^reward_model.backbone: 'hub:nobody/unknown-rm': .*known_configs.yaml"):
        mp.plan_stages(Params.model_validate(raw), root=ROOT)
