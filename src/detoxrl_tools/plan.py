"""`detoxrl plan`: an estimate of each model-loading stage's GPU memory, from params alone (nothing is loaded).

For each stage that loads models (sft, dpo, dpo_feedback, reward_model, eval_reward_model, pref_eval, ppo, grpo,
rloo, pref_gen, generate, evaluate, chat_eval), the models it holds, as the stage's code loads them:

  sft           the base model, LoRA/QLoRA or full (TRL SFTTrainer)
  dpo           the SFT model + a LoRA adapter; its reference is the adapter disabled (no copy), or, full
                fine-tuning, a frozen copy; dpo_feedback the same code with its own block
  reward_model  the backbone (`reward_model.backbone`) with a scalar head
  ppo           the SFT model + LoRA (policy and, adapter disabled, reference), the value head, a bf16 sampling
                copy under bf16, and the reward model of `ppo.reward` (inference only)
  grpo, rloo    the SFT model + LoRA (TRL; reference = adapter disabled) and ppo.reward's reward model
  generate, chat_eval, pref_gen   one model sampling with a KV cache; evaluate: models/base for the perplexity;
  pref_eval     the base/sft/dpo models one after another; eval_reward_model: models/reward (and reward_bench.models)

Formulas (N = parameters, N_t = trainable parameters, B = bytes per element, per process):

  weights      N_frozen x B(weight dtype); 4-bit (QLoRA, NF4 + double quantization) 0.53 B/param and 8-bit 1.06
               B/param for the decoder layers' linear weights, the embeddings, norms and LM head at 2 B
  trainable    LoRA adapters (r x (in + out) per adapted linear) in fp32: 4 (weight) + 4 (gradient) + 8 (AdamW's two
               fp32 states) = 16 B/param; full fine-tuning: B_w (weight) + B_w (gradient) + 8 (AdamW) + 4 (fp32 master
               copy when the weights are 16-bit) = 16 B/param; a reward model's scalar head is trained in full
  activations  training, per decoder layer and token: (5h + 5q + 4i) x B_a saved for backward (h hidden, q = heads x
               head_dim, i intermediate; q, k, v after RoPE and GQA's repeat, the attention output, two norms, the
               SwiGLU's four); with gradient checkpointing L x h x B_a (each layer's input) plus one layer's; the LM
               head: tokens_scored x vocab x 4 B x 3 (fp32 logits, log-softmax, its gradient), capped at 2^27 logits
               for the TRL stages (their head runs in tiles beyond); B_a = 2 under bf16/fp16 (or 16-bit weights),
               else 4. Inference: one layer's transient tensors, tokens x max(3i + 2h, 5q + 2h) x B_a, plus the
               logits of the scored positions x 4 B x 2 (x 4 when sampling: softmax, top-p sort)
  KV cache     rows x (prompt + new tokens) x layers x kv_heads x head_dim x 2 (K and V) x B(weight dtype)
  total        the persistent part (weights, trainable states, rollout buffers) + the largest phase (rollout,
               reference pass, training step) + 10% of it for the allocator's fragmentation
  fits         the smallest GPU of GPUS whose memory holds the total; with compute.num_processes = P > 1 the
               training stages' batch is split over P and, under a ZeRO config (compute.accelerate_config), ZeRO-2
               divides gradients and optimizer states by P, ZeRO-3 the weights too (the trained model's, not an
               inference-only reward model's), and offload_*_device: cpu moves them to the host (ZeRO-3 then keeps
               two gathered layers on the GPU); a stage that fits no GPU says how many ZeRO-3 processes would

Assumed: a GPU computing bf16 (Ampere or newer: `auto` precision = bf16; T4/V100 have none), sdpa/flash attention
(no seq^2 term), RTP prompts of PROMPT_TOKENS tokens, chat prompts of prepare_chat.max_chars / 4 tokens plus a
template. Judges (MiniLM encoders, 22M parameters) are not counted. It is an estimate: tests/unit/test_plan.py holds it
to torch's measured peak of one training step and one generation on CPU, within a factor of 2.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from detoxrl import DetoxError
from detoxrl.params import ComputeParams, LoraParams, TrainParams, stage_compute
from detoxrl.schema import COMPUTE_BLOCKS, Params

GIB = 2**30
# name, memory (GiB as the GPU's nominal size), smallest first
GPUS = [("T4/V100-16", 16), ("A10/L4/RTX4090", 24), ("A100-40", 40), ("A100-80/H100", 80), ("H200", 141)]
FRAGMENTATION = 0.10  # share added to the estimate for the CUDA caching allocator's fragmentation
PROMPT_TOKENS = {"raw": 48, "chat": 96}  # RTP prompt tokens assumed: raw text, or inside a chat template
CHAT_TEMPLATE_TOKENS = 32
TILE_LOGITS = 2**27  # training/lm_head.MAX_LOGITS: above this the TRL stages' LM head runs in tiles
KNOWN = Path(__file__).with_name("known_configs.yaml")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ENCODERS = {"bert", "deberta-v2", "roberta", "xlm-roberta", "electra", "distilbert", "modernbert"}
DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ENCODER_LINEARS = ("query", "key", "value", "dense")


@dataclass(frozen=True)
class Arch:
    """The numbers of a config.json the plan needs."""
    name: str
    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    dtype: str

    @property
    def encoder(self) -> bool:
        return self.model_type in ENCODERS

    @property
    def q(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv(self) -> int:
        return self.kv_heads * self.head_dim

    def layer_linears(self) -> dict[str, tuple[int, int, int]]:
        """Linear module name -> (in, out, count per layer)."""
        h, i = self.hidden, self.intermediate
        if self.encoder:  # query/key/value, then three `dense` (attention output, intermediate, output)
            return {"query": (h, h, 1), "key": (h, h, 1), "value": (h, h, 1), "dense": (h, h, 1),
                    "dense_in": (h, i, 1), "dense_out": (i, h, 1)}
        return {"q_proj": (h, self.q, 1), "k_proj": (h, self.kv, 1), "v_proj": (h, self.kv, 1),
                "o_proj": (self.q, h, 1), "gate_proj": (h, i, 1), "up_proj": (h, i, 1), "down_proj": (i, h, 1)}

    def linear_params(self) -> int:
        per_layer = sum(a * b * n for a, b, n in self.layer_linears().values())
        if self.model_type == "qwen2":
            per_layer += self.q + 2 * self.kv  # q/k/v biases
        if self.encoder:
            per_layer += 4 * self.hidden + self.intermediate + self.hidden  # biases
        return per_layer * self.layers

    def other_params(self, head: str) -> int:
        """Embeddings, norms and the head: `lm` (an LM head, unless tied), `score` (a scalar head) or `none`."""
        h = self.hidden
        n = self.vocab * h
        if self.encoder:
            n += 512 * h + 2 * h + self.layers * 4 * h  # positions, embedding norm, two LayerNorms a layer
            n += (h * h + h + h + 1) if head == "score" else 0  # pooler + classifier
            return n
        n += self.layers * 2 * h + h  # RMSNorms
        if self.model_type == "qwen3":
            n += self.layers * 2 * self.head_dim  # q_norm, k_norm
        if head == "lm" and not self.tied:
            n += self.vocab * h
        if head == "score":
            n += h
        return n

    def params(self, head: str = "lm") -> int:
        return self.linear_params() + self.other_params(head)

    def lora_params(self, lora_r: int, targets) -> int:
        names = (ENCODER_LINEARS if self.encoder else DECODER_LINEARS) if targets == "all-linear" else list(targets)
        n = 0
        for name, (a, b, k) in self.layer_linears().items():
            if name.split("_")[0] in names or name in names:
                n += lora_r * (a + b) * k
        return n * self.layers


def _from_config(name: str, cfg: dict) -> Arch:
    try:
        heads = cfg["num_attention_heads"]
        return Arch(name=name, model_type=cfg["model_type"], hidden=cfg["hidden_size"],
                    layers=cfg["num_hidden_layers"], heads=heads,
                    kv_heads=cfg.get("num_key_value_heads") or heads,
                    head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
                    intermediate=cfg["intermediate_size"], vocab=cfg["vocab_size"],
                    tied=bool(cfg.get("tie_word_embeddings", True)),
                    dtype=str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32"))
    except KeyError as exc:
        raise DetoxError(f"{name}: config lacks {exc.args[0]} (plan needs hidden_size, num_hidden_layers, "
                         "num_attention_heads, intermediate_size, vocab_size, model_type)") from None


def known_configs() -> dict[str, dict]:
    return yaml.safe_load(KNOWN.read_text(encoding="utf-8"))


def resolve_arch(source: str, key: str, base_dir: Path | None = None, dtype: str | None = None) -> Arch:
    """The architecture of a model source (`packaged:`, `hub:`, `local:<dir>`, a bare dir), read from its
    config.json where it is on disk, else from known_configs.yaml; `key` is the param naming it (for the error)."""
    kind, _, ref = source.partition(":")
    path = Path(ref) if kind == "local" else Path(source) if kind not in {"hub", "packaged"} else None
    if path is not None and (path / "config.json").is_file():
        arch = _from_config(source, json.loads((path / "config.json").read_text()))
    elif source in known_configs():
        arch = _from_config(source, known_configs()[source])
    elif kind == "packaged" and base_dir is not None and (base_dir / "config.json").is_file():
        arch = _from_config(source, json.loads((base_dir / "config.json").read_text()))
    else:
        where = f"{path} has no config.json" if path is not None else "not in src/detoxrl_tools/known_configs.yaml"
        raise DetoxError(f"{key}: {source!r}: no architecture to plan with ({where}); add its config.json fields "
                         "(hidden_size, num_hidden_layers, ...) to src/detoxrl_tools/known_configs.yaml, or point "
                         "the param at a local model directory")
    return replace(arch, dtype=dtype) if dtype else arch


# ---------------------------------------------------------------------------------------------
# Memory of one model in one stage
# ---------------------------------------------------------------------------------------------

@dataclass
class ModelMem:
    role: str  # e.g. "policy (LoRA r=16)", "reward model (inference)"
    params: int
    trainable: int
    weights: float  # bytes
    states: float  # gradients + optimizer state (+ master copy) of the trainable params
    activations: float = 0.0
    kv_cache: float = 0.0
    note: str = ""


@dataclass
class StagePlan:
    stage: str
    models: list[ModelMem]
    processes: int = 1
    sharding: str = ""  # "", "ZeRO-2", "ZeRO-3", "ZeRO-3 (offload)"
    extra: float = 0.0  # rollout buffers etc.

    @property
    def total(self) -> float:
        persistent = sum(m.weights + m.states for m in self.models) + self.extra
        peak = max([m.activations + m.kv_cache for m in self.models] or [0.0])
        body = persistent + peak
        return body * (1 + FRAGMENTATION)


def weight_bytes(arch: Arch, head: str, quant: str = "none", dtype: str | None = None) -> float:
    b = DTYPE_BYTES[dtype or arch.dtype]
    if quant == "4bit":
        return arch.linear_params() * 0.53 + arch.other_params(head) * 2
    if quant == "8bit":
        return arch.linear_params() * 1.06 + arch.other_params(head) * 2
    return arch.params(head) * b


def train_activations(arch: Arch, rows: int, seq: int, act_bytes: int, checkpointing: bool) -> float:
    tokens = rows * seq
    per_layer = 5 * arch.hidden + 5 * arch.q + 4 * arch.intermediate
    if checkpointing:
        return tokens * (arch.layers * arch.hidden + per_layer) * act_bytes
    return tokens * arch.layers * per_layer * act_bytes


def infer_activations(arch: Arch, rows: int, seq: int, act_bytes: int) -> float:
    h, i = arch.hidden, arch.intermediate
    return rows * seq * max(3 * i + 2 * h, 5 * arch.q + 2 * h) * act_bytes


def logits_bytes(arch: Arch, scored: int, copies: int, cap: bool = False) -> float:
    n = scored * arch.vocab
    return (min(n, TILE_LOGITS) if cap else n) * 4 * copies


def kv_bytes(arch: Arch, rows: int, seq: int, dtype: str | None = None) -> float:
    if arch.encoder:
        return 0.0
    return rows * seq * arch.layers * arch.kv * 2 * DTYPE_BYTES[dtype or arch.dtype]


def trained_model(arch: Arch, role: str, head: str, lora: LoraParams | None, quant: str, dtype: str | None,
                  lora_r: int = 16, targets=None) -> ModelMem:
    """Weights and trainable states of a trained model (LoRA when `lora` is enabled or `targets` given)."""
    n = arch.params(head)
    if (lora is not None and lora.enabled) or targets is not None:
        r, tm = (lora.r, lora.target_modules) if lora is not None else (lora_r, targets)
        adapters = arch.lora_params(r, tm)
        head_trained = arch.other_params("score") - arch.other_params("none") if head == "score" else 0
        trainable = adapters + head_trained
        w = weight_bytes(arch, head, quant, dtype) + adapters * 4
        kind = "QLoRA 4-bit" if quant == "4bit" else "QLoRA 8-bit" if quant == "8bit" else "LoRA"
        return ModelMem(f"{role} ({kind} r={r})", n + adapters, trainable, w, trainable * 12)
    b = DTYPE_BYTES[dtype or arch.dtype]
    return ModelMem(f"{role} (full)", n, n, n * b, n * (b + 8 + (4 if b == 2 else 0)))


def inference_model(arch: Arch, role: str, head: str, dtype: str | None = None) -> ModelMem:
    return ModelMem(role, arch.params(head), 0, weight_bytes(arch, head, dtype=dtype), 0.0)


# ---------------------------------------------------------------------------------------------
# The stages
# ---------------------------------------------------------------------------------------------

# The blocks with their own `compute:` (schema.COMPUTE_BLOCKS, params.stage_compute); the other stages run with
# the global `compute`.


def _compute(params: Params, stage: str) -> ComputeParams:
    """The compute a stage runs with: its block's `compute:` where set, else the global `compute`."""
    return stage_compute(params, stage) if stage in COMPUTE_BLOCKS else params.compute


def _zero(compute: ComputeParams, root: Path) -> tuple[int, dict]:
    """(ZeRO stage or 0, offload devices) of a stage's accelerate_config."""
    cfg_path = compute.accelerate_config
    if not cfg_path or compute.num_processes == 1:
        return 0, {}
    path = Path(cfg_path) if Path(cfg_path).is_absolute() else root / cfg_path
    if path.is_file():
        ds = (yaml.safe_load(path.read_text()) or {}).get("deepspeed_config") or {}
        stage = int(ds.get("zero_stage") or 0)
        return stage, {k: ds.get(f"offload_{k}_device") == "cpu" for k in ("param", "optimizer")}
    stage = 3 if "zero3" in cfg_path else 2 if "zero2" in cfg_path else 0
    return stage, {"param": stage == 3 and "offload" in cfg_path, "optimizer": "offload" in cfg_path}


def _shard(plan: StagePlan, trained: ModelMem, arch: Arch, params: Params, root: Path) -> None:
    """Apply data parallelism and ZeRO to a training stage's trained model, in place."""
    compute = _compute(params, plan.stage)
    p = compute.num_processes
    plan.processes = p
    stage, offload = _zero(compute, root)
    if stage < 2:
        return
    grads = trained.trainable * (DTYPE_BYTES[arch.dtype] if trained.trainable == trained.params else 4)
    optim = trained.states - grads
    trained.states = grads / p + (0.0 if offload.get("optimizer") else optim / p)
    if stage == 3:
        layer = arch.linear_params() / arch.layers * 2 * 2  # two gathered layers, 16-bit
        trained.weights = layer + (0.0 if offload.get("param") else trained.weights / p)
    plan.sharding = f"ZeRO-{stage}" + (" (offload)" if any(offload.values()) else "")


def _act_bytes(precision_16: bool, arch: Arch, quant: str = "none") -> int:
    return 2 if precision_16 or quant != "none" or DTYPE_BYTES[arch.dtype] == 2 else 4


def _bf16(flag) -> bool:
    return flag in (True, "auto", "bf16", "fp16")  # auto: a GPU computing bf16


def _per_process(global_rows: int, params: Params, stage: str) -> int:
    return max(1, math.ceil(global_rows / _compute(params, stage).num_processes))


def per_process_batch(b: int, g: int, world: int) -> int:
    """Sequences (or pairs) per forward pass of each process, as training/common.per_process_batch splits the global
    batch over `world` processes (grad_accum first, then batch_size)."""
    if world == 1 or g % world == 0:
        return b
    share = world // math.gcd(g, world)
    return b // share if (b * g) % world == 0 and b % share == 0 else b


def _trl_stage(stage: str, tp: TrainParams, arch: Arch, params: Params, root: Path, role: str,
               seqs_per_row: int, head: str, completion: int) -> StagePlan:
    b = per_process_batch(tp.batch_size, tp.grad_accum, _compute(params, stage).num_processes)
    rows = b * seqs_per_row
    ab = _act_bytes(_bf16(tp.bf16), arch, tp.quantization)
    m = trained_model(arch, role, head, tp.lora, tp.quantization, None)
    m.activations = train_activations(arch, rows, tp.max_length, ab, tp.gradient_checkpointing)
    if head == "lm":
        m.activations += logits_bytes(arch, rows * completion, 3, cap=True)
    m.note = f"{rows} x {tp.max_length} tokens" + (", checkpointed" if tp.gradient_checkpointing else "")
    plan = StagePlan(stage, [m])
    if stage.startswith("dpo") and not tp.lora.enabled:
        ref = inference_model(arch, "reference (frozen copy)", "lm")
        ref.activations = infer_activations(arch, rows, tp.max_length, ab)
        plan.models.append(ref)
    _shard(plan, m, arch, params, root)
    return plan


def _rm_arch(params: Params, policy: Arch, base_dir: Path, source: str, key: str) -> Arch:
    """The architecture of a reward model source: models/reward is the reward_model stage's backbone."""
    if Path(source) == Path("models/reward"):
        bb = params.reward_model.backbone
        return policy if bb == "base" else resolve_arch(bb, "reward_model.backbone", base_dir)
    return resolve_arch(source, key, base_dir)


def _reward_model(params: Params, policy: Arch, base_dir: Path) -> tuple[ModelMem | None, Arch | None]:
    r = params.ppo.reward
    if r.source == "toxicity" or (r.source == "composite" and not r.composite.weights.get("reward_model")):
        return None, None
    arch = _rm_arch(params, policy, base_dir, r.reward_model.model, "ppo.reward.reward_model.model")
    m = inference_model(arch, f"reward model {r.reward_model.model} (inference)", "score")
    m.activations = infer_activations(arch, r.reward_model.batch_size, r.reward_model.max_length,
                                      DTYPE_BYTES[arch.dtype])
    return m, arch


def _online_rl(stage: str, params: Params, policy: Arch, base_dir: Path, root: Path) -> StagePlan:
    """ppo (the project's loop), grpo and rloo (TRL): policy + LoRA, reference = adapter disabled, reward model."""
    dtype = params.base_model.dtype
    prompt = PROMPT_TOKENS[params.generate.prompt_format]
    if stage == "ppo":
        pp = params.ppo
        rows, mb = _per_process(pp.batch_size, params, stage), _per_process(pp.minibatch_size, params, stage)
        new = pp.max_new_tokens
        bf16, ckpt, lora = _bf16(pp.mixed_precision), False, pp.lora
    else:
        pp = getattr(params, stage)
        rows = _per_process(pp.prompts_per_step * pp.num_generations, params, stage)
        mb, new, lora = rows, pp.max_new_tokens, pp.lora
        bf16, ckpt = _bf16(pp.mixed_precision), pp.gradient_checkpointing
    seq = prompt + new
    ab = _act_bytes(bf16, policy)
    m = trained_model(policy, "policy + reference (adapter disabled)", "lm", None, "none", dtype,
                      lora_r=lora.r, targets=lora.target_modules)
    train = train_activations(policy, mb, seq, ab, ckpt) + logits_bytes(policy, mb * new, 3, cap=stage != "ppo")
    rollout = kv_bytes(policy, rows, seq, dtype) + infer_activations(policy, rows, prompt, ab) \
        + logits_bytes(policy, rows, 4)
    reference = infer_activations(policy, rows, seq, ab) + logits_bytes(policy, rows * new, 3)
    m.activations = max(train, reference)
    plan = StagePlan(stage, [m], extra=rows * new * policy.hidden * 4 if stage == "ppo" else 0.0)
    m.note = f"train {mb} x {seq} tokens; reference pass {rows} x {seq}"
    if stage == "ppo":
        m.params += policy.hidden + 1
        m.trainable += policy.hidden + 1
        if bf16:
            sampler = inference_model(policy, "sampling copy (bf16)", "lm", dtype="bfloat16")
            plan.models.append(sampler)
    gen = ModelMem("generation (KV cache)", 0, 0, 0.0, 0.0, kv_cache=rollout, note=f"{rows} rows x {seq} tokens")
    plan.models.append(gen)
    rm, _ = _reward_model(params, policy, base_dir)
    if rm is not None:
        plan.models.append(rm)
    _shard(plan, m, policy, params, root)
    return plan


def _sampling(stage: str, arch: Arch, role: str, rows: int, prompt: int, new: int) -> StagePlan:
    m = inference_model(arch, role, "lm")
    ab = DTYPE_BYTES[arch.dtype]
    m.kv_cache = kv_bytes(arch, rows, prompt + new)
    m.activations = infer_activations(arch, rows, prompt, ab) + logits_bytes(arch, rows, 4)
    m.note = f"{rows} rows x ({prompt} + {new}) tokens"
    return StagePlan(stage, [m])


def plan_stages(params: Params, base_dir: str | Path = "models/base", root: str | Path = ".") -> list[StagePlan]:
    """The memory plan of every model-loading stage for these params."""
    base_dir, root = Path(base_dir), Path(root)
    dtype = params.base_model.dtype
    policy = resolve_arch(params.base_model.source, "base_model.source", base_dir, dtype=dtype)
    prompt = PROMPT_TOKENS[params.generate.prompt_format]
    hh = params.prepare.hh
    plans = [
        _trl_stage("sft", params.sft, policy, params, root, "base", 1, "lm",
                   min(params.sft.max_length, hh.max_response_tokens)),
        _trl_stage("dpo", params.dpo, policy, params, root, "SFT model", 2, "lm",
                   min(params.dpo.max_length, hh.max_response_tokens)),
        _trl_stage("dpo_feedback", params.dpo_feedback, policy, params, root, "init model", 2, "lm",
                   min(params.dpo_feedback.max_length, params.pref_gen.max_new_tokens)),
    ]
    rm_arch = policy if params.reward_model.backbone == "base" else resolve_arch(
        params.reward_model.backbone, "reward_model.backbone", base_dir)
    plans.append(_trl_stage("reward_model", params.reward_model, rm_arch, params, root, "backbone + scalar head",
                            2, "score", 0))
    er = params.eval_reward_model
    rm_eval = inference_model(rm_arch, "models/reward", "score")
    rm_eval.activations = infer_activations(rm_arch, er.batch_size, er.reward_bench.max_length, DTYPE_BYTES[
        rm_arch.dtype])
    eval_rm = StagePlan("eval_reward_model", [rm_eval])
    for name, source in er.reward_bench.models.items():  # scored one after another: the largest counts
        other = resolve_arch(source, f"eval_reward_model.reward_bench.models.{name}", base_dir)
        m = inference_model(other, f"{name} (one at a time)", "score")
        m.activations = infer_activations(other, er.batch_size, er.reward_bench.max_length, DTYPE_BYTES[other.dtype])
        if m.weights + m.activations > rm_eval.weights + rm_eval.activations:
            eval_rm = StagePlan("eval_reward_model", [m])
    plans.append(eval_rm)
    pe = inference_model(policy, "base, sft, dpo (one at a time)", "lm")
    pe_seq = hh.max_prompt_tokens + hh.max_response_tokens
    pe.activations = infer_activations(policy, 2 * params.pref_eval.batch_size, pe_seq, DTYPE_BYTES[dtype]) \
        + logits_bytes(policy, 2 * params.pref_eval.batch_size * hh.max_response_tokens, 2)
    plans.append(StagePlan("pref_eval", [pe]))
    for stage in ("ppo", "grpo", "rloo"):
        plans.append(_online_rl(stage, params, policy, base_dir, root))
    pg = params.pref_gen
    plans.append(_sampling("pref_gen", policy, "SFT model", pg.batch_size, prompt, pg.max_new_tokens))
    g = params.generate
    gen = _sampling("generate", policy, "each model", _per_process(g.batch_size, params, "generate"), prompt,
                    g.max_new_tokens)
    gen.processes = _compute(params, "generate").num_processes
    plans.append(gen)
    ev = inference_model(policy, "models/base (perplexity)", "lm")
    ev.activations = infer_activations(policy, params.evaluate.fluency_batch_size, prompt + g.max_new_tokens,
                                       DTYPE_BYTES[dtype]) \
        + logits_bytes(policy, params.evaluate.fluency_batch_size * g.max_new_tokens, 2)
    plans.append(StagePlan("evaluate", [ev], processes=_compute(params, "evaluate").num_processes))
    ce = params.chat_eval
    chat_prompt = (params.prepare_chat.max_chars or 2000) // 4 + CHAT_TEMPLATE_TOKENS
    chat = _sampling("chat_eval", policy, "each model", _per_process(ce.batch_size, params, "chat_eval"), chat_prompt,
                     ce.max_new_tokens)
    chat.processes = _compute(params, "chat_eval").num_processes
    plans.append(chat)
    return plans


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------

def fits(total: float) -> str | None:
    for name, gib in GPUS:
        if total <= gib * GIB:
            return f"{name} ({gib} GB)"
    return None


def processes_needed(plan: StagePlan, params: Params, base_dir: Path, root: Path, gpu_gib: int = 80) -> int | None:
    """The fewest ZeRO-3 processes (powers of 2 up to 64) whose per-GPU share fits a `gpu_gib` GPU, or None."""
    for p in (2, 4, 8, 16, 32, 64):
        zero3 = ComputeParams(num_processes=p, accelerate_config="configs/accelerate/zero3.yaml")
        trial = params.model_copy(update={"compute": zero3})
        if plan.stage in COMPUTE_BLOCKS:  # the stage's own compute, so that it takes the trial's
            block = getattr(params, plan.stage)
            trial = trial.model_copy(update={plan.stage: block.model_copy(update={"compute": zero3})})
        again = [s for s in plan_stages(trial, base_dir, root) if s.stage == plan.stage][0]
        if again.total <= gpu_gib * GIB:
            return p
    return None


def _g(x: float) -> str:
    return "" if not x else f"{x / GIB:.2f}" if x < 10 * GIB else f"{x / GIB:.1f}"


def _n(n: int) -> str:
    return "" if not n else f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


FOOTER = """Estimate (src/detoxrl_tools/plan.py has the formulas), GiB per process: weights at the stored dtype
(4-bit QLoRA 0.53 B/param, embeddings and head 2 B); trainable params 16 B each (weight, gradient, AdamW's two
fp32 states, an fp32 master for 16-bit weights); activations (5h + 5q + 4i) x tokens x layers x 2|4 B
(checkpointed: h per layer plus one layer) plus fp32 logits x 3; KV cache rows x tokens x layers x kv_heads x
head_dim x 2 x dtype bytes; total = the persistent part + the largest phase, +10% fragmentation. bf16 assumed
where `auto` (Ampere or newer); held within 2x of torch's measured peak on CPU (tests/unit/test_plan.py)."""


def table(plans: list[StagePlan], params: Params, base_dir: str | Path = "models/base",
          root: str | Path = ".") -> str:
    header = ["stage", "model", "params (trainable)", "weights", "grads + optim", "activations", "KV cache",
              "total / GPU", "fits on"]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * 2 + ["---:"] * 6 + ["---"]) + " |"]
    for plan in plans:
        for i, m in enumerate(plan.models):
            count = f"{_n(m.params)} ({_n(m.trainable)})" if m.trainable else _n(m.params)
            cells = [plan.stage if i == 0 else "", m.role + (f": {m.note}" if m.note else ""), count,
                     _g(m.weights), _g(m.states), _g(m.activations), _g(m.kv_cache), "", ""]
            lines.append("| " + " | ".join(cells) + " |")
        where = fits(plan.total)
        if where is None:
            need = processes_needed(plan, params, Path(base_dir), Path(root)) if plan.stage in TRAINED else None
            where = f"none; ZeRO-3 over {need} x 80 GB GPUs" if need else "none"
        shard = f", {plan.processes} processes" + (f", {plan.sharding}" if plan.sharding else "") \
            if plan.processes > 1 else ""
        lines.append(f"| | **total**{shard} | | | | | | **{_g(plan.total)}** | {where} |")
    return "\n".join(lines) + "\n"


TRAINED = {"sft", "dpo", "dpo_feedback", "reward_model", "ppo", "grpo", "rloo"}


def render(params: Params, base_dir: str | Path = "models/base", root: str | Path = ".") -> str:
    chain = " -> ".join(params.profiles) if params.profiles else "defaults"
    head = (f"Memory plan for base_model.source {params.base_model.source} ({params.base_model.dtype}), profiles: "
            f"{chain}; compute.num_processes {params.compute.num_processes}"
            + (f", {params.compute.accelerate_config}" if params.compute.accelerate_config else "") + "\n\n")
    return head + table(plan_stages(params, base_dir, root), params, base_dir, root) + "\n" + FOOTER + "\n"
