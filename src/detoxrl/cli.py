"""The detoxrl command line: one subcommand per pipeline stage (dvc.yaml calls these).

Each command is thin: it loads and validates params.yaml, then calls one stage function.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from . import DetoxError, launch

app = typer.Typer(
    help="Reproducible RLHF (PPO) and DPO experiments for reducing language-model toxicity. "
    "Stages are normally run by `dvc repro`; each can also be run by hand.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ParamsOpt = typer.Option(Path("params.yaml"), "--params", help="Params file to read.")
# Options several stage commands share.
BaseOpt = typer.Option(Path("models/base"), help="Base model directory (LoRA adapters load over it).")
EvalPromptsOpt = typer.Option(Path("data/processed/eval_prompts.jsonl"), help="Held-out eval prompts.")
TrainPairsOpt = typer.Option(Path("data/processed/pref_train.jsonl"), help="Training preference pairs.")
ValPairsOpt = typer.Option(Path("data/processed/pref_val.jsonl"), help="Validation preference pairs.")
TestPairsOpt = typer.Option(Path("data/processed/pref_test.jsonl"), help="Held-out preference pairs.")


def _params(path: Path):
    from .params import load_params

    return load_params(path)


def _card(name: str, method: str, cards_dir: Path = Path("metrics/cards"), **fields) -> None:
    """Write the model card of what this command made (the main process only): metrics/cards/<name>.json."""
    from .cards import make_card, write_card

    if launch.rank() == 0:
        write_card(make_card(name, method, **fields), cards_dir)


def _read_card(name: str) -> dict:
    from .cards import read_card

    return read_card(name)


@app.command("base-model")
def base_model_cmd(params: Path = ParamsOpt, out: Path = typer.Option(Path("models/base"), help="Output directory.")):
    """Materialise the base model (packaged GGUF, hub id or local dir) as an HF model directory."""
    from .models.base import materialise_base_model

    prov = materialise_base_model(_params(params).base_model, out)
    _card("base", "base", seed=None, init=prov["source"], data=[], signal="none: the pretrained model as it is")
    typer.echo(f"base model {prov['source']}: {prov['parameters']:,} parameters -> {out}")


@app.command()
def prepare(
    params: Path = ParamsOpt,
    raw: Path = typer.Option(Path("data/raw"), help="Raw data directory."),
    base: Path = typer.Option(Path("models/base"), help="Base model dir (its tokenizer sets length limits)."),
    out: Path = typer.Option(Path("data/processed"), help="Output directory."),
    metrics: Path = typer.Option(Path("metrics/data.json"), help="Data statistics file."),
):
    """Parse HH-RLHF pairs and RealToxicityPrompts into the processed JSONL datasets."""
    from .data.prepare import prepare as run

    stats = run(raw, base, out, metrics, _params(params).prepare)
    typer.echo(", ".join(f"{k}={v}" for k, v in stats["counts"].items()))


@app.command("fetch-raw")
def fetch_raw_cmd(
    params: Path = ParamsOpt,
    only: Optional[list[str]] = typer.Option(None, help="Fetch only this raw path (repeatable)."),
):
    """Rebuild data/raw from the public sources in params (md5-checked against the .dvc pointers).

    For users without access to the team's DVC remote; everyone else runs `dvc pull`.
    """
    from .data.fetch import fetch_raw

    sources = _params(params).raw_data.sources
    for rel in fetch_raw(Path("."), sources, only):
        typer.echo(f"fetched {rel} (md5 verified)")
    for rel in [r for r, url in sources.items() if url is None and not only]:
        typer.echo(f"not fetched {rel}: no public file reproduces it byte for byte; `dvc pull` it from a remote "
                   "that holds it (README: Data)")


@app.command("pull-raw")
def pull_raw_cmd():
    """`dvc pull` the raw data from the default DVC remote; where it cannot be reached, say so and the ways on."""
    from .data.pull import pull_raw

    typer.echo(pull_raw(Path(".")))


SeedOpt = typer.Option(None, "--seed", help="Training seed (default: the block's `seed`); outputs default to "
                                            "<method>/s<seed>.")
CardsDirOpt = typer.Option(Path("metrics/cards"), help="Where the model card goes (a committed experiment: "
                           "experiments/results/cards, outside the report stage's deps).")


def _out_name(out: Path) -> str:
    """The model's name in the report and on its card: models/sft -> sft, models/sft_seeds/s1 -> sft_seeds/s1."""
    return out.relative_to("models").as_posix() if out.is_relative_to("models") else out.name


def _own_checkpoints(knobs, name: str, default: str):
    """The block's knobs, checkpointing beside the block's `checkpoint_dir` in a directory of its own when the run
    is not the stage's default model (a seed of a committed experiment: .cache/checkpoints/sft_seeds_s1), so that
    it never resumes, nor discards, another run's checkpoints."""
    if name == default:
        return knobs
    own = Path(knobs.checkpoint_dir).with_name(name.replace("/", "_"))
    return knobs.model_copy(update={"checkpoint_dir": str(own)})


@app.command()
def sft(
    params: Path = ParamsOpt,
    base: Path = BaseOpt,
    data: Path = typer.Option(Path("data/processed/sft.jsonl"), help="SFT dialogues."),
    out: Path = typer.Option(Path("models/sft"), help="Output model directory; its path under models/ names the "
                             "model card (models/sft_seeds/s1 -> sft_seeds/s1)."),
    metrics: Path = typer.Option(Path("metrics/sft.json"), help="Metrics file."),
    plots: Path = typer.Option(Path("plots/sft"), help="Training curves (dvclive) directory."),
    seed: Optional[int] = typer.Option(None, help="Training seed: the data order and the LoRA initialisation "
                                       "(the sft_seeds@<seed> experiment). Default: sft.seed."),
    cards_dir: Path = CardsDirOpt,
):
    """Supervised fine-tuning (TRL SFTTrainer, LoRA by default) of the base model on the chosen responses."""
    from .training.sft import train_sft

    p = _params(params)
    name = _out_name(out)
    knobs = _own_checkpoints(p.sft if seed is None else p.sft.model_copy(update={"seed": seed}), name, "sft")
    launch.relaunch(p, "sft")  # > 1 process (sft.compute, else compute): this command again, under accelerate launch
    m = train_sft(base, data, out, metrics, plots, knobs, profiles=p.profiles)
    _card(name, "sft", cards_dir, seed=knobs.seed, init=_read_card("base")["init"], data=[data],
          signal="supervised: HH-RLHF chosen responses",
          training_samples=m["steps"] * knobs.batch_size * knobs.grad_accum, sample_unit="dialogues",
          seconds=m["train_seconds"], platform=m["platform"])
    if launch.rank() == 0:
        typer.echo(f"sft seed {knobs.seed}: {m['steps']} steps, train loss {m['train_loss']:.3f} -> {out}")


@app.command()
def dpo(
    params: Path = ParamsOpt,
    sft_model: Path = typer.Option(Path("models/sft"), "--sft", help="SFT model (start point and reference)."),
    base: Path = BaseOpt,
    train: Path = TrainPairsOpt,
    val: Path = ValPairsOpt,
    out: Path = typer.Option(Path("models/dpo"), help="Output model directory; its path under models/ names the "
                             "model card (models/dpo_seeds/s1 -> dpo_seeds/s1)."),
    metrics: Path = typer.Option(Path("metrics/dpo.json"), help="Metrics file."),
    plots: Path = typer.Option(Path("plots/dpo"), help="Training curves (dvclive) directory."),
    block: str = typer.Option("dpo", help="The params block of knobs: dpo (HH pairs) or dpo_feedback (on-policy)."),
    run: Optional[str] = typer.Option(None, help="A `feedback_runs` key: DPO on its labelled pairs once per seed in "
                                      "`seeds` -> models/dpo_<run>/s<seed> (the dpo_feedback@<run> stage)."),
    seed: Optional[int] = typer.Option(None, help="Training seed: the data order and the LoRA initialisation "
                                       "(the dpo_seeds@<seed> experiment). Default: the block's seed."),
    cards_dir: Path = CardsDirOpt,
):
    """DPO (TRL DPOTrainer) from the SFT model on preference pairs; the SFT model is the reference."""
    from .training.dpo import train_dpo

    p = _params(params)
    if block not in ("dpo", "dpo_feedback"):
        raise DetoxError(f"--block {block!r}: expected dpo or dpo_feedback")
    launch.relaunch(p, block)
    if run is None:
        name = _out_name(out)  # dpo, dpo_seeds/s1
        knobs = getattr(p, block) if seed is None else getattr(p, block).model_copy(update={"seed": seed})
        knobs = _own_checkpoints(knobs, name, "dpo")
        m = train_dpo(sft_model, base, train, val, out, metrics, plots, knobs, profiles=p.profiles)
        _card(name, "dpo", cards_dir, seed=knobs.seed, init=sft_model, data=[train],
              signal="DPO on HH-RLHF human preference labels", training_samples=m["pairs_seen"], sample_unit="pairs",
              seconds=m["train_seconds"], platform=m["platform"])
        runs = [(out, m)]
    else:
        runs = _dpo_feedback(p, run, base, cards_dir)
    for path, m in runs:
        if launch.rank() == 0:
            typer.echo(f"dpo: {m['steps']} steps, train loss {m['train_loss']:.3f}, validation reward accuracy "
                       f"{m['validation']['rewards/accuracies']:.3f} -> {path}")


def _dpo_feedback(p, run: str, base: Path, cards_dir: Path) -> list:
    """dpo_feedback@<run>: DPO from the run's init model on its labelled pairs, once per seed. A seeded init (a dir
    of per-seed models, e.g. AI-then-human from models/dpo_rlaif) starts seed s from its seed s. It reads no `models:`
    or `seeded:` params (the stage declares neither: adding a method there must not retrain this one)."""
    from .cards import compose
    from .params import seeded_name
    from .training.dpo import train_dpo

    if run not in p.feedback_runs:
        raise DetoxError(f"--run {run!r} is not a feedback_runs key ({', '.join(p.feedback_runs)})")
    r, method, out = p.feedback_runs[run], f"dpo_{run}", []
    labels = _read_card(r.labels_card)
    for seed in p.seeds:
        name = seeded_name(method, seed)
        init = Path(r.init) / f"s{seed}" if (Path(r.init) / f"s{seed}").is_dir() else Path(r.init)
        if not init.is_relative_to("models"):
            raise DetoxError(f"feedback_runs.{run}.init {r.init!r}: expected a model directory under models/")
        knobs = p.dpo_feedback.model_copy(
            update={"seed": seed, "checkpoint_dir": f"{p.dpo_feedback.checkpoint_dir}/{method}_s{seed}"})
        m = train_dpo(init, base, r.train, r.val, Path("models") / name, Path("metrics") / f"{name}.json",
                      Path("plots") / name, knobs, profiles=p.profiles)
        own = _card_fields(name, "dpo", seed=seed, init=init, data=[r.train], signal=f"DPO on {labels['signal']}",
                           training_samples=m["pairs_seen"], sample_unit="on-policy pairs",
                           seconds=m["train_seconds"], platform=m["platform"])
        init_card = _read_card(init.relative_to("models").as_posix())  # models/sft -> sft, models/x/s1 -> x/s1
        if launch.rank() == 0:
            from .cards import write_card

            write_card(compose(own, labels, init_card), cards_dir)
        out.append((Path("models") / name, m))
    return out


def _card_fields(name: str, method: str, **fields) -> dict:
    from .cards import make_card

    return make_card(name, method, **fields)


@app.command("pref-eval")
def pref_eval(
    params: Path = ParamsOpt,
    pairs: Path = TestPairsOpt,
    base: Path = BaseOpt,
    out: Path = typer.Option(Path("metrics/pref_accuracy.json"), help="Metrics file."),
):
    """Held-out preference accuracy of base, sft and dpo (log-likelihood; DPO implicit reward)."""
    from .evaluation.preference import preference_accuracy

    r = preference_accuracy(pairs, base, out, _params(params))
    accs = ", ".join(f"{k} {v['value']:.3f}" for k, v in r["loglik_accuracy"].items())
    typer.echo(f"{r['pairs']} pairs: loglik accuracy {accs}; dpo reward accuracy "
               f"{r['dpo_reward_accuracy']['value']:.3f} -> {out}")


@app.command("reward-model")
def reward_model(
    params: Path = ParamsOpt,
    base: Path = BaseOpt,
    train: Path = TrainPairsOpt,
    val: Path = ValPairsOpt,
    out: Path = typer.Option(Path("models/reward"), help="Output model directory."),
    metrics: Path = typer.Option(Path("metrics/reward_train.json"), help="Metrics file."),
    plots: Path = typer.Option(Path("plots/reward_model/train"), help="Training curves (dvclive) directory."),
):
    """Pairwise (Bradley-Terry) reward model on preference pairs (TRL RewardTrainer, LoRA by default)."""
    from .training.reward_model import train_reward_model

    p = _params(params)
    launch.relaunch(p, "reward_model")
    m = train_reward_model(base, train, val, out, metrics, plots, p.reward_model, profiles=p.profiles)
    if launch.rank() == 0:
        typer.echo(f"reward_model: {m['steps']} steps, train loss {m['train_loss']:.3f}, validation accuracy "
                   f"{m['validation'].get('accuracy', float('nan')):.3f} -> {out}")


@app.command("eval-reward-model")
def eval_reward_model(
    params: Path = ParamsOpt,
    model: Path = typer.Option(Path("models/reward"), help="Reward model directory."),
    pairs: Path = TestPairsOpt,
    out: Path = typer.Option(Path("metrics/reward_model.json"), help="Metrics file."),
    plots: Path = typer.Option(Path("plots/reward_model"), help="Reward distribution plot directory."),
    reward_bench: Optional[Path] = typer.Option(Path("data/raw/reward-bench/filtered.jsonl"),
                                                help="RewardBench filtered split ('' to skip)."),
):
    """Held-out pairwise accuracy of the reward model (with CI), by prompt length, its agreement with a judge, and
    RewardBench's section scores."""
    from .evaluation.reward_eval import evaluate_reward_model

    reward_bench = reward_bench if reward_bench and str(reward_bench) not in ("", ".") else None
    r = evaluate_reward_model(model, pairs, out, plots, _params(params), reward_bench)
    a = r["accuracy"]
    typer.echo(f"reward model: accuracy {a['value']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}] on {r['pairs']} "
               f"pairs -> {out}")
    for name, rb in r.get("reward_bench", {}).items():
        typer.echo(f"{name} on RewardBench ({rb['pairs']} pairs): " + ", ".join(
            f"{section} {v['value']:.3f}" for section, v in rb["sections"].items())
            + f"; score {rb['score']['value']:.3f}")


def _model_dir(params, name: str, model_dir: Optional[Path] = None) -> Path:
    if model_dir is not None:  # a model outside `models` (a committed experiment, experiments/dvc.yaml)
        return model_dir
    from .params import instances

    models = instances(params)
    if name not in models:
        raise DetoxError(f"model {name!r} is not in params.yaml `models` or a seed of `seeded` ({', '.join(models)}); "
                         "a model outside them needs --model-dir")
    return Path(models[name])


ModelDirOpt = typer.Option(None, "--model-dir", help="The model's directory, for a model not in params.yaml `models` "
                                                      "(a committed experiment, e.g. ppo_cvar).")


@app.command()
def generate(
    model: str = typer.Argument(..., help="A model name from params.yaml `models`."),
    params: Path = ParamsOpt,
    prompts: Path = EvalPromptsOpt,
    base: Path = BaseOpt,
    out_dir: Path = typer.Option(Path("data/generations"), help="Output directory."),
    model_dir: Optional[Path] = ModelDirOpt,
):
    """Sample k continuations per held-out RTP prompt -> data/generations/<model>.jsonl."""
    from .evaluation.generate import generate as run

    p = _params(params)
    launch.relaunch(p, "generate")  # > 1 process (generate.compute, else compute): the prompts shared among processes
    n = run(_model_dir(p, model, model_dir), base, prompts, out_dir / f"{model}.jsonl", p.generate, p.thinking)
    if launch.rank() == 0:
        typer.echo(f"{model}: {n} continuations -> {out_dir / (model + '.jsonl')}")


@app.command()
def evaluate(
    model: str = typer.Argument(..., help="A model name from params.yaml `models`."),
    params: Path = ParamsOpt,
    prompts: Path = EvalPromptsOpt,
    base: Path = BaseOpt,
    generations: Path = typer.Option(Path("data/generations"), help="Generations directory."),
    metrics_dir: Path = typer.Option(Path("metrics/eval"), help="Metrics directory."),
    scores_dir: Path = typer.Option(Path("data/scores"), help="Per-sample scores directory."),
    model_dir: Optional[Path] = ModelDirOpt,
):
    """Score a model's continuations: toxicity metrics with CIs, fluency, diversity."""
    from .evaluation.evaluate import evaluate as run

    p = _params(params)
    if model not in p.filters:  # a moderation filter's outputs are evaluated like a model's
        _model_dir(p, model, model_dir)
    launch.relaunch(p, "evaluate")  # > 1 process (evaluate.compute, else compute): perplexity passes shared
    r = run(model, generations / f"{model}.jsonl", prompts, base, metrics_dir / f"{model}.json",
            scores_dir / f"{model}.jsonl", p)
    if launch.rank() != 0:
        return
    t = r["toxicity"]["overall"]
    typer.echo(f"{model}: expected max toxicity {t['expected_max_toxicity']['value']:.3f}, "
               f"toxicity probability {t['toxicity_probability']['value']:.3f}")


@app.command("filter")
def filter_cmd(
    name: str = typer.Argument(..., help="A filter name from params.yaml `filters`."),
    params: Path = ParamsOpt,
    prompts: Path = EvalPromptsOpt,
    base: Path = BaseOpt,
    generations: Path = typer.Option(Path("data/generations"), help="Generations directory (read and written)."),
    metrics_dir: Path = typer.Option(Path("metrics/filter"), help="Metrics directory."),
):
    """Moderation output filter: resample (or refuse) a source model's flagged continuations -> generations/<name>."""
    from .evaluation.moderation_filter import moderation_filter

    p = _params(params)
    if name not in p.filters:
        raise DetoxError(f"filter {name!r} is not in params.yaml `filters` ({', '.join(p.filters) or 'none'})")
    f = p.filters[name]
    r = moderation_filter(name, f.source, _model_dir(p, f.source), base, generations / f"{f.source}.jsonl", prompts,
                          generations / f"{name}.jsonl", metrics_dir / f"{name}.json", p)
    source = _read_card(f.source)
    _card(name, "filter", seed=p.filter.seed, init=f.model, data=[], judges=[r["judge"]["name"], *source["judges"]],
          reward_models=source["reward_models"],
          signal=f"moderation at inference: {r['judge']['name']} >= {p.filter.threshold}, resampled at most "
                 f"{p.filter.max_resamples} times, then {p.filter.on_exhausted}",
          inference_samples=r["extra_samples"], scored_responses=r["judge_queries"], seconds=r["seconds"],
          notes=f"its source {f.source}'s budget not included; the filter's cost is paid again at every use")
    if r:
        typer.echo(f"{name}: {r['flagged_first_pass']} of {r['continuations']} {f.source} continuations flagged by "
                   f"{r['judge']['name']}, {r['extra_samples']} resamples, {r['exhausted']} still flagged "
                   f"({p.filter.on_exhausted}), {r['judge_queries']} judge queries, {r['seconds']:.0f} s "
                   f"-> {generations / (name + '.jsonl')}")


@app.command("validate-judges")
def validate_judges_cmd(
    params: Path = ParamsOpt,
    prompts: Path = EvalPromptsOpt,
    out: Path = typer.Option(Path("metrics/judges.json"), help="Output metrics file."),
    plots: Path = typer.Option(Path("plots"), help="Directory for the judge reliability curves."),
    chat_heldout: Optional[Path] = typer.Option(Path("data/chat/heldout.jsonl"),
                                                help="Held-out ToxicChat inputs with human labels ('' to skip)."),
):
    """Agreement (AUROC, Spearman) and calibration of each judge against the Perspective scores of the eval texts,
    and each judge's AUROC/AUPRC against ToxicChat's human labels."""
    chat_heldout = chat_heldout if chat_heldout and str(chat_heldout) not in ("", ".") else None
    from .evaluation.validate_judges import validate_judges as run

    result = run(prompts, out, _params(params), plots, chat_heldout)
    for name, r in result["judges"].items():
        typer.echo(f"{name}: " + (f"skipped ({r['skipped']})" if "skipped" in r else
                                  f"AUROC {r['auroc']:.3f}, Spearman {r['spearman']:.3f}"))
    for name, r in result.get("toxicchat", {}).get("judges", {}).items():
        if "skipped" not in r:
            typer.echo(f"{name} on ToxicChat (human labels): AUROC {r['auroc']:.3f}, AUPRC {r['auprc']:.3f}")


@app.command("train-judge")
def train_judge_cmd(
    params: Path = ParamsOpt,
    rtp: Path = typer.Option(Path("data/raw/real-toxicity-prompts"), help="Raw RTP files (challenging, nontoxic)."),
    prompts: Path = EvalPromptsOpt,
    out: Path = typer.Option(None, help="Output judge directory (default: judges.trained_dir)."),
    metrics: Path = typer.Option(Path("metrics/judge_train.json"), help="Metrics file."),
):
    """Train the perspective_distilled judge on non-eval RTP texts, and calibrate judges to Perspective."""
    from .scoring.train_judge import train_judge

    p = _params(params)
    out = out or Path(p.judges.trained_dir)
    m = train_judge(rtp, prompts, out, metrics, p)
    h = m["heldout"]
    typer.echo(f"judge: {m['data']['texts']} texts, held-out AUROC {h['auroc']:.3f}, Spearman {h['spearman']:.3f}, "
               f"{m['seconds']['total']:.0f} s -> {out}")


@app.command("pref-gen")
def pref_gen_cmd(
    params: Path = ParamsOpt,
    sft_model: Path = typer.Option(Path("models/sft"), "--sft", help="The model whose responses are compared."),
    base: Path = BaseOpt,
    prompts: Path = typer.Option(Path("data/processed/ppo_prompts.jsonl"), help="Training prompts (never eval)."),
    eval_prompts: Path = EvalPromptsOpt,
    out: Path = typer.Option(Path("data/feedback"), help="Output directory."),
    metrics: Path = typer.Option(Path("metrics/pref_gen.json"), help="Counts file."),
):
    """n responses per prompt from the SFT model, for an AI-graded and a human-graded pool."""
    from .training.pref_gen import pref_gen

    p = _params(params)
    m = pref_gen(sft_model, base, prompts, eval_prompts, out, metrics, p.pref_gen, p.generate, profiles=p.profiles)
    typer.echo(f"pref_gen: {m['ai']['prompts']} AI-pool and {m['human']['prompts']} human-pool prompts x {m['n']} "
               f"responses -> {out}")


@app.command("label-ai")
def label_ai_cmd(
    params: Path = ParamsOpt,
    pool: Path = typer.Option(Path("data/feedback/ai_pool.jsonl"), help="pref_gen's AI pool."),
    out: Path = typer.Option(Path("data/feedback"), help="Output directory."),
    metrics: Path = typer.Option(Path("metrics/label_ai.json"), help="Counts file."),
):
    """Order each prompt's responses with the AI grader(s): DPO pairs, margin-filtered, grader agreement."""
    from .training.label_ai import label_ai

    p = _params(params)
    m = label_ai(pool, out, metrics, p)
    gen = __import__("json").loads(Path("metrics/pref_gen.json").read_text())
    graded = m["grader_queries"] // len(m["graders"])
    _card("data/ai_labels", "label_ai", seed=p.label_ai.seed, init=gen["model"], data=[pool],
          signal=f"AI preference labels by {m['graders'][0]}",
          judges=[g for g in m["graders"][:1] if g != "reward_model"],
          reward_models=[p.ppo.reward.reward_model.model] if "reward_model" in m["graders"][:1] else [],
          training_samples=m["pairs"], sample_unit="pairs", scored_responses=graded,
          seconds=gen["seconds"] + m["seconds"],
          notes=f"{m['pairs']} pairs of {m['prompts']} prompts; graders compared: {', '.join(m['graders'])}")
    typer.echo(f"label_ai: {m['pairs']} pairs ({m['dropped_below_margin']} below the margin) by {m['graders'][0]}; "
               f"agreement {m['agreement']} -> {out}")


@app.command("human-pairs")
def human_pairs_cmd(
    params: Path = ParamsOpt,
    pool: Path = typer.Option(Path("data/feedback/human_pool.jsonl"), help="pref_gen's human pool."),
    labels: Path = typer.Option(Path("data/labels/human.jsonl"), help="Human labels (absent: none yet)."),
    out: Path = typer.Option(Path("data/feedback"), help="Output directory."),
    metrics: Path = typer.Option(Path("metrics/human_labels.json"), help="Counts file."),
):
    """People's labels of the human pool -> DPO pairs (majority of votes), with counts and annotator agreement."""
    from .training.human_pairs import human_pairs

    p = _params(params)
    m = human_pairs(pool, labels, out, metrics, p)
    _card("data/human_labels", "human_pairs", seed=p.human_pairs.seed, init="models/sft", data=[pool, labels],
          signal="human preference labels (detoxrl label-human)", training_samples=m["pairs"], sample_unit="pairs",
          notes=f"{m['labels']} human labels; labelling time not measured")
    typer.echo(f"human_pairs: {m['labels']} labels ({m['stale_labels']} stale) -> {m['pairs']} pairs; {m['status']}")


@app.command("human-eval")
def human_eval_cmd(
    params: Path = ParamsOpt,
    eval_prompts: Path = EvalPromptsOpt,
    generations: Path = typer.Option(Path("data/generations"), help="Generations directory."),
    scores: Path = typer.Option(Path("data/scores"), help="Per-sample judge scores directory."),
    labels: Path = typer.Option(Path("data/labels/human_eval.jsonl"), help="Human labels (absent: none yet)."),
    metrics: Path = typer.Option(Path("metrics/human_eval.json"), help="Output metrics."),
):
    """Blind side-by-side human labels of two models: win rate with a CI, each judge's agreement with people."""
    from .evaluation.human_eval import human_eval

    m = human_eval(eval_prompts, generations, scores, labels, metrics, _params(params))
    typer.echo(f"human_eval: {m['labels']} labels of {m['tasks']} pairs ({m['model_a']} vs {m['model_b']}); "
               f"{m['status']}")


def _label_tasks(mode: str, params: Path, pool: Path, eval_prompts: Path, generations: Path) -> list[dict]:
    from .io import read_jsonl

    if mode == "pairs":
        from .data.labels import pool_tasks

        return pool_tasks(read_jsonl(pool))
    if mode == "eval":
        from .evaluation.human_eval import eval_tasks

        return eval_tasks(_params(params), eval_prompts, generations)
    raise DetoxError(f"--mode {mode!r}: use 'pairs' (the human pool, for DPO) or 'eval' (two models side by side)")


ModeOpt = typer.Option("pairs", "--mode", help="pairs: the human pool (DPO data); eval: two models side by side.")
PoolOpt = typer.Option(Path("data/feedback/human_pool.jsonl"), help="pref_gen's human pool (--mode pairs).")
GenerationsOpt = typer.Option(Path("data/generations"), help="Generations (--mode eval).")


@app.command("label-human")
def label_human_cmd(
    mode: str = ModeOpt,
    port: int = typer.Option(8765, help="Port on 127.0.0.1 (0: any free port)."),
    labels: Optional[Path] = typer.Option(None, help="Labels file (default: data/labels/human{,_eval}.jsonl)."),
    params: Path = ParamsOpt,
    pool: Path = PoolOpt,
    eval_prompts: Path = EvalPromptsOpt,
    generations: Path = GenerationsOpt,
):
    """Serve the labelling page on 127.0.0.1: two texts side by side, keyboard shortcuts, every answer saved at once."""
    from .data.labels import LABEL_FILES, LabelStore
    from .label_page import LabelServer

    tasks = _label_tasks(mode, params, pool, eval_prompts, generations)
    store = LabelStore(labels or LABEL_FILES[mode], mode, tasks)
    server = LabelServer(store, port)
    typer.echo(f"label-human ({mode}): {len(tasks)} pairs, labels -> {store.path}; open {server.url} "
               "(Ctrl-C to stop)", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


label_studio = typer.Typer(help="Label Studio's JSON formats: export the pairs as tasks, import the annotations.")
app.add_typer(label_studio, name="label-studio")


@label_studio.command("export")
def label_studio_export(
    out: Path = typer.Argument(..., help="Tasks file to write (import it in Label Studio)."),
    mode: str = ModeOpt,
    params: Path = ParamsOpt,
    pool: Path = PoolOpt,
    eval_prompts: Path = EvalPromptsOpt,
    generations: Path = GenerationsOpt,
):
    """Write the pairs as Label Studio tasks, and the matching labelling config beside them (<out>.xml)."""
    import json

    from .data.labels import LABEL_STUDIO_CONFIG, label_studio_tasks
    from .io import atomic_file

    tasks = _label_tasks(mode, params, pool, eval_prompts, generations)
    with atomic_file(out) as fh:
        json.dump(label_studio_tasks(tasks), fh, ensure_ascii=False, indent=1)
    with atomic_file(out.with_suffix(".xml")) as fh:
        fh.write(LABEL_STUDIO_CONFIG)
    typer.echo(f"{out}: {len(tasks)} Label Studio tasks; labelling config {out.with_suffix('.xml')}")


@label_studio.command("import")
def label_studio_import(
    export: Path = typer.Argument(..., help="Label Studio's JSON export of the annotated tasks."),
    mode: str = ModeOpt,
    labels: Optional[Path] = typer.Option(None, help="Labels file (default: data/labels/human{,_eval}.jsonl)."),
    params: Path = ParamsOpt,
    pool: Path = PoolOpt,
    eval_prompts: Path = EvalPromptsOpt,
    generations: Path = GenerationsOpt,
):
    """Append Label Studio's annotations to the labels file (all or nothing; duplicates refused)."""
    import json

    from .data.labels import LABEL_FILES, LabelStore, import_label_studio

    tasks = _label_tasks(mode, params, pool, eval_prompts, generations)
    try:
        data = json.loads(export.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DetoxError(f"{export}: file not found") from None
    except json.JSONDecodeError as exc:
        raise DetoxError(f"{export}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    new, counts = import_label_studio(data, str(export), tasks, mode)
    store = LabelStore(labels or LABEL_FILES[mode], mode, tasks)
    store.add_many(new)
    typer.echo(f"{export}: {len(new)} labels from {counts['tasks']} tasks ({counts['cancelled']} cancelled, kept as "
               f"skip) -> {store.path}")


@app.command("prepare-chat")
def prepare_chat_cmd(
    params: Path = ParamsOpt,
    raw: Path = typer.Option(Path("data/raw"), help="Raw data directory."),
    out: Path = typer.Option(Path("data/chat"), help="Output directory."),
    metrics: Path = typer.Option(Path("metrics/chat_data.json"), help="Counts file."),
):
    """ToxicChat -> the chat judge's training inputs, held-out inputs, and chat evaluation prompts."""
    from .data.prepare_chat import prepare_chat

    stats = prepare_chat(raw, out, metrics, _params(params).prepare_chat)
    typer.echo(f"toxicchat: {stats['judge_train']['records']} judge-training, {stats['heldout']['records']} held-out "
               f"inputs; eval prompts {stats['eval_prompts']['selected']} -> {out}")


@app.command("train-chat-judge")
def train_chat_judge_cmd(
    params: Path = ParamsOpt,
    data: Path = typer.Option(Path("data/chat/judge_train.jsonl"), help="ToxicChat training inputs."),
    metrics: Path = typer.Option(Path("metrics/chat_judge_train.json"), help="Metrics file."),
):
    """Train the chat_distilled judge on ToxicChat's human toxicity labels (cross-validated, calibrated)."""
    from .scoring.train_chat_judge import train_chat_judge

    p = _params(params)
    m = train_chat_judge(data, p.judges.chat_dir, metrics, p.train_chat_judge, profiles=p.profiles)
    h = m["heldout"]
    typer.echo(f"chat judge: {m['data']['texts']} texts, cross-validated AUROC {h['auroc']:.3f}, AUPRC "
               f"{h['auprc']:.3f} (toxic rate {h['positive_rate']:.3f}) -> {p.judges.chat_dir}")


@app.command("chat-eval")
def chat_eval_cmd(
    model: str = typer.Argument(..., help="A model name from params.yaml `models`."),
    params: Path = ParamsOpt,
    prompts: Path = typer.Option(Path("data/chat/eval_prompts.jsonl"), help="Chat evaluation prompts."),
    base: Path = BaseOpt,
):
    """Answer held-out ToxicChat user inputs in chat format; toxicity of the answers and refusal rate."""
    from .evaluation.chat_eval import chat_eval

    p = _params(params)
    launch.relaunch(p, "chat_eval")  # > 1 process (chat_eval.compute, else compute): the prompts shared among processes
    r = chat_eval(model, _model_dir(p, model), base, prompts, Path("data/chat/answers") / f"{model}.jsonl",
                  Path("metrics/chat") / f"{model}.json", p)
    if launch.rank() != 0:
        return
    t = r["toxicity"]["overall"]
    typer.echo(f"{model}: chat answers, expected max toxicity {t['expected_max_toxicity']['value']:.3f} "
               f"({r['judge']}), refusal rate {r['refusal_rate']['overall']['value']:.3f}")


@app.command()
def report(params: Path = ParamsOpt):
    """Compare all models against the baseline: metrics/summary.json, plots/, reports/report.md."""
    from .evaluation.report import report as run

    run("metrics/eval", "data/scores", "metrics/judges.json", "metrics/data.json", "metrics/summary.json",
        "plots", "reports/report.md", _params(params))
    typer.echo("wrote metrics/summary.json, plots/, reports/report.md")


@app.command()
def ppo(
    params: Path = ParamsOpt,
    out: Optional[Path] = typer.Option(None, help="Output model directory."),
    metrics: Optional[Path] = typer.Option(None, help="Metrics file."),
    plots: Optional[Path] = typer.Option(None, help="Training curves (dvclive) directory."),
    variant: str = typer.Option("plain", help="plain: the `ppo` params as they are | cvar: risk-averse PPO, `ppo` with "
                                "`ppo.cvar` = the `ppo_cvar` block, enabled (the ppo_cvar experiment)."),
    seed: Optional[int] = typer.Option(None, help="Training seed (the ppo@<seed> stages: one of `seeds`); the "
                                       "outputs default to models/<name>/s<seed>, metrics/<name>/s<seed>.json, "
                                       "plots/<name>/s<seed>, name ppo (plain) or ppo_cvar. Default: ppo.seed."),
    cards_dir: Path = CardsDirOpt,
):
    """PPO from models/sft on the PPO prompts against the configured reward -> models/ppo/s<seed>."""
    from .evaluation.generate import format_prompt
    from .params import ppo_cvar_params, seeded_name
    from .scoring.rewards import make_reward, reward_models_in
    from .training.ppo import train_ppo

    p = _params(params)
    if variant not in ("plain", "cvar"):
        raise DetoxError(f"--variant {variant!r}: expected plain or cvar")
    ppo_params = ppo_cvar_params(p) if variant == "cvar" else p.ppo
    seed = ppo_params.seed if seed is None else seed
    ppo_params = ppo_params.model_copy(update={"seed": seed})
    name = seeded_name("ppo_cvar" if variant == "cvar" else "ppo", seed)
    out, metrics, plots = (out or Path("models") / name, metrics or Path("metrics") / f"{name}.json",
                           plots or Path("plots") / name)
    launch.relaunch(p, "ppo")  # > 1 process (ppo.compute, else compute): this command again, under accelerate launch
    reward = make_reward(p)
    final = train_ppo("models/sft", "models/base", "data/processed/ppo_prompts.jsonl", out, metrics, plots,
                      Path(".cache/checkpoints") / name.replace("/", "_"), ppo_params, reward,
                      lambda text, tok: format_prompt(text, tok, p.generate),
                      reward_inputs=[path for path in ("models/reward", p.judges.trained_dir) if Path(path).exists()],
                      profiles=p.profiles)
    rollouts = ppo_params.steps * ppo_params.batch_size
    _card(name, "ppo", cards_dir, seed=seed, init="models/sft", data=["data/processed/ppo_prompts.jsonl"],
          signal=reward.name, judges=reward.judges, reward_models=reward_models_in(p.ppo.reward),
          training_samples=rollouts, sample_unit="rollouts",
          scored_responses=rollouts, seconds=final["train_seconds"], platform=final["platform"],
          notes=f"CVaR alpha 1 -> {ppo_params.cvar.alpha:g}" if ppo_params.cvar.enabled else "")
    if launch.rank() == 0:
        typer.echo(f"ppo: final reward {final['reward_score_mean']:.3f}, KL {final['objective_kl']:.3f}"
                   + (f", CVaR alpha {final['cvar_alpha']:.2f}" if ppo_params.cvar.enabled else "") + f" -> {out}")


def _online(kind: str, params: Path, seed: Optional[int], out: Optional[Path], metrics: Optional[Path],
            plots: Optional[Path], cards_dir: Path) -> None:
    """The grpo and rloo commands: TRL's GRPOTrainer / RLOOTrainer with PPO's reward, prompts and budget."""
    from .evaluation.generate import format_prompt
    from .params import seeded_name
    from .scoring.rewards import make_reward, reward_models_in
    from .training.grpo import train_online

    p = _params(params)
    block = getattr(p, kind)
    seed = block.seed if seed is None else seed
    name = seeded_name(kind, seed)
    launch.relaunch(p, kind)  # > 1 process (<kind>.compute, else compute): this command again, under accelerate launch
    out = out or Path("models") / name
    final = train_online(kind, "models/sft", "models/base", "data/processed/ppo_prompts.jsonl", out,
                         metrics or Path("metrics") / f"{name}.json", plots or Path("plots") / name, block,
                         make_reward(p), lambda text, tok: format_prompt(text, tok, p.generate), seed,
                         checkpoint_dir=Path(".cache/checkpoints") / f"{kind}_s{seed}",
                         reward_inputs=[d for d in ("models/reward", p.judges.trained_dir) if Path(d).exists()],
                         reward_models=reward_models_in(p.ppo.reward), profiles=p.profiles, cards_dir=cards_dir)
    if launch.rank() == 0:
        typer.echo(f"{kind} seed {seed}: {final['scored_responses']} scored responses in {final['train_seconds']:.0f}"
                   f" s, final reward {final['reward_mean']:.3f}, KL {final['kl'] or 0:.3f} -> {out}")


OnlineOutOpt = typer.Option(None, help="Output model directory (default models/<method>/s<seed>).")
OnlineMetricsOpt = typer.Option(None, help="Metrics file (default metrics/<method>/s<seed>.json).")
OnlinePlotsOpt = typer.Option(None, help="Training curves (dvclive) directory (default plots/<method>/s<seed>).")


@app.command()
def grpo(params: Path = ParamsOpt, seed: Optional[int] = SeedOpt, out: Optional[Path] = OnlineOutOpt,
         metrics: Optional[Path] = OnlineMetricsOpt, plots: Optional[Path] = OnlinePlotsOpt,
         cards_dir: Path = CardsDirOpt):
    """GRPO (TRL GRPOTrainer) from models/sft on the PPO prompts against PPO's reward -> models/grpo/s<seed>."""
    _online("grpo", params, seed, out, metrics, plots, cards_dir)


@app.command()
def rloo(params: Path = ParamsOpt, seed: Optional[int] = SeedOpt, out: Optional[Path] = OnlineOutOpt,
         metrics: Optional[Path] = OnlineMetricsOpt, plots: Optional[Path] = OnlinePlotsOpt,
         cards_dir: Path = CardsDirOpt):
    """RLOO (TRL RLOOTrainer) from models/sft, the grpo stage's setup with the rloo block -> models/rloo/s<seed>."""
    _online("rloo", params, seed, out, metrics, plots, cards_dir)


@app.command("check-params")
def check_params(params: Path = ParamsOpt):
    """Validate a params file against the schema."""
    _params(params)
    typer.echo(f"{params}: ok")


@app.command("use-profile")
def use_profile(profile: Path = typer.Argument(..., help="A partial params file, e.g. profiles/smoke.yaml."),
                params: Path = ParamsOpt,
                force: bool = typer.Option(False, "--force", help="Apply over uncommitted changes to params.yaml.")):
    """Merge a profile's overrides into params.yaml, after those of the profiles it `extends:`, base first
    (validated first; comments kept; the chain recorded in `profiles:`). Refuses while params.yaml differs from git's
    HEAD, unless --force."""
    from .profiles import apply_profile  # not a stage's import: no stage depends on the profile code

    applied = apply_profile(params, profile, force=force)
    if applied.note:
        typer.echo(applied.note)
    typer.echo(f"{params}: applied {' then '.join(str(p) for p in applied.chain)}; profiles: {applied.recorded}")


@app.command("plan")
def plan_cmd(params: Path = ParamsOpt, base: Path = BaseOpt,
             profile: Optional[Path] = typer.Option(None, help="Plan params.yaml with this profile's chain merged "
                                                    "in, in memory (params.yaml is not written), e.g. "
                                                    "profiles/gpu-1b.yaml.")):
    """Estimate each model-loading stage's GPU memory (weights, gradients + optimizer, activations, KV cache) and
    the smallest GPU it fits on, from the params alone."""
    from .models.plan import render

    if profile is not None:
        from .profiles import resolved_params  # not a stage's import

        p = resolved_params(params, profile)
    else:
        p = _params(params)
    typer.echo(render(p, base, Path(".")), nl=False)


@app.command("check-repro")
def check_repro_cmd(
    stage: str = typer.Argument(..., help="A dvc.yaml stage with metrics, e.g. ppo or evaluate@ppo."),
    rev: str = typer.Option("HEAD", help="Git revision holding the committed metrics to compare with."),
    rtol: float = typer.Option(0.0, help="Relative tolerance per number (0 = identical; CPU runs are)."),
    atol: float = typer.Option(0.0, help="Absolute tolerance per number."),
    upstream: bool = typer.Option(False, "--upstream", help="Rerun the stage's whole upstream first (a replication "
                                  "on another machine: base model, training, generations), not the stage alone."),
):
    """Rerun a stage with unchanged params (dvc repro --force) and compare its metrics with the committed ones:
    identical on the same CPU kind; on another kind, one seed's evaluation within its method's spread over seeds."""
    from .repro_check import check_repro

    result = check_repro(stage, rev, rtol, atol, echo=typer.echo, upstream=upstream)
    if result.ignored:
        typer.echo(f"not compared (wall-clock): {', '.join(result.ignored)}")
    if not result.ok:
        what = (f"NOT reproduced within the confidence intervals, {len(result.different)} of {result.ci_checked} "
                "headline metrics outside" if result.mode == "ci" else
                f"NOT within the spread over seeds, {len(result.different)} of {result.ci_checked} headline metrics "
                "outside the committed one-run interval" if result.mode == "seeds" else
                f"NOT reproduced, {len(result.different)} of {result.compared} values differ "
                f"(rtol={rtol}, atol={atol})")
        typer.echo(f"{stage}: {what}:")
        for line in result.different:
            typer.echo(f"  {line}")
        raise typer.Exit(1)
    if result.mode == "ci" and not result.ci_checked:
        typer.echo(f"{stage}: not comparable across CPU kinds ({result.changed} of {result.compared} values differ; "
                   "its metrics carry no confidence intervals); compare the evaluation of its model instead, with its "
                   "upstream rerun: `detoxrl check-repro evaluate_seeded@<method>-<seed> --upstream` (a seed is "
                   "held to the spread over seeds) or `evaluate@<model> --upstream`. The rerun's outputs are in the "
                   "workspace: `git checkout <metrics files> dvc.lock && dvc checkout` restores the committed ones")
        return
    if result.mode == "seeds":
        typer.echo(f"{stage}: reproduced within the spread over seeds: {result.ci_checked} headline metrics inside "
                   "the committed one-run intervals (seeds x prompts; another CPU kind is another draw of the training "
                   "randomness); the rerun's outputs are in the workspace")
        return
    if result.mode == "ci":
        typer.echo(f"{stage}: reproduced within the confidence intervals: {result.ci_checked} headline metrics "
                   f"inside the committed CIs ({result.changed} of {result.compared} values differ, as expected "
                   "on another CPU kind); the rerun's outputs are in the workspace")
        return
    how = "identical" if result.max_rel_diff == 0 else f"within rtol={rtol}, atol={atol} " \
        f"(max relative difference {result.max_rel_diff:.2e})"
    typer.echo(f"{stage}: reproduced, {result.compared} values {how}")


@app.command("stage-deps")
def stage_deps_cmd(write: bool = typer.Option(False, "--write", help="Rewrite dvc.yaml's code deps to the closures.")):
    """Check (or --write) that each dvc.yaml stage declares every project module its command can run."""
    from .stage_code import missing_code_deps, write_code_deps

    root = Path.cwd()
    if write:
        changed = write_code_deps(root)
        typer.echo(f"dvc.yaml: code deps rewritten for {', '.join(changed)}" if changed
                   else "dvc.yaml: code deps exact")
        return
    missing = missing_code_deps(root)
    for stage, modules in missing.items():
        typer.echo(f"{stage}: runs {', '.join(modules)} but does not declare it")
    if missing:
        raise DetoxError(f"dvc.yaml: {len(missing)} stage(s) miss code deps; `detoxrl stage-deps --write` fixes them")
    typer.echo("dvc.yaml: every stage declares the code it runs")


@app.command("plots-template")
def plots_template_cmd(out: Path = typer.Option(Path(".cache/plots-offline.html"), help="Template to write.")):
    """Write an offline HTML template for `dvc plots show/diff` (Vega libraries inlined, fetched with npm)."""
    from .plots_page import build_offline_template

    build_offline_template(out)
    typer.echo(f"{out}: use it with `dvc plots show --html-template {out}`")


@app.command("docs")
def docs_cmd(check: bool = typer.Option(False, "--check", help="Write nothing; fail naming each stale file.")):
    """Write the generated docs (results, pipeline and params pages, README's result table) from committed files, and
    params.yaml's end-of-line comments from the schema's descriptions."""
    from .docs_gen import stale, write  # not a stage's import: no stage depends on the docs generator

    root = Path.cwd()
    if check:
        old = stale(root)
        if old:
            raise DetoxError(f"generated docs are stale: {', '.join(old)} (run `detoxrl docs` and commit them)")
        typer.echo("docs: every generated file is up to date")
        return
    changed = write(root)
    typer.echo(f"docs: wrote {', '.join(changed)}" if changed else "docs: every generated file is up to date")


def main() -> None:
    try:
        app()
    except DetoxError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    finally:
        launch.end_processes()


if __name__ == "__main__":
    main()
