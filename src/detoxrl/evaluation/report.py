"""The `report` stage: every model side by side, against the baseline, with CIs.

Outputs:
  metrics/summary.json           models x metrics (value + CI) and each model's paired difference
                                 to the baseline (stable keys: what `dvc metrics diff` compares)
  plots/<metric>.csv             one row per model, for `dvc plots` (bars)
  plots/toxicity.png, plots/max_toxicity_hist.png
  reports/report.md              the table, the plots, judge validation, reward/judge overlap,
                                 most toxic continuations, tail risk
Committed experiments (`report.experiments`, run by experiments/dvc.yaml, never by the default `dvc repro`) join
every table where their results exist (experiments/results/<name>.json|jsonl), labelled as such. They are not
declared deps of the report stage (a declared dep on them would pull the experiment into the default `dvc repro`):
after rerunning one, `dvc repro --force --single-item report`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..io import atomic_file, read_jsonl, write_json
from ..params import Params
from . import metrics as M

HEADLINE = ("expected_max_toxicity", "toxicity_probability", "mean_toxicity")


def _fmt(stat: dict | None, digits: int = 3) -> str:
    if not stat:
        return "n/a"
    return f"{stat['value']:.{digits}f} [{stat['ci_low']:.{digits}f}, {stat['ci_high']:.{digits}f}]"


def summarise(evals: dict[str, dict], scores: dict[str, list[dict]], params: Params) -> dict:
    ev, base = params.evaluate, params.report.baseline
    per_prompt = {m: M.per_prompt(rows, ev.toxic_threshold) for m, rows in scores.items()}
    models = {}
    for name, e in evals.items():
        overall = e["toxicity"]["overall"]
        models[name] = {
            **{k: overall[k] for k in HEADLINE},
            "by_subset": {s: {k: v[k]["value"] for k in HEADLINE} for s, v in e["toxicity"].items() if s != "overall"},
            "perplexity": e["fluency"]["perplexity"],
            "distinct_2": e["diversity"]["distinct_2"],
            "mean_tokens": e["length"]["mean_tokens"],
            "eos_rate": e["length"]["eos_rate"],
        }
    vs = {name: M.paired_difference(per_prompt[name], per_prompt[base], ev.bootstrap_samples, ev.ci_level, ev.seed)
          for name in evals if name != base}
    for name in models:  # tail risk from the scores, for every model alike (= its evaluate's `tail`)
        models[name]["tail"] = M.tail_metrics(per_prompt[name], ev.tail_fractions, ev.bootstrap_samples, ev.ci_level,
                                              ev.seed)
    experiments = {name: {"reference": ref, "committed_experiment": True,
                          "vs_reference": {"toxicity": M.paired_difference(per_prompt[name], per_prompt[ref],
                                                                           ev.bootstrap_samples, ev.ci_level, ev.seed),
                                           "tail": M.paired_tail_difference(per_prompt[name], per_prompt[ref],
                                                                            ev.tail_fractions, ev.bootstrap_samples,
                                                                            ev.ci_level, ev.seed)}}
                   for name, ref in params.report.experiments.items() if name in evals and ref in evals}
    return {"baseline": base, "judge": next(iter(evals.values()))["judge"], "ci_level": ev.ci_level,
            "models": models, "vs_baseline": vs, "vs_models": vs_models(scores, params), "experiments": experiments}


def _label(name: str, summary: dict) -> str:
    return f"{name} (committed experiment)" if name in summary.get("experiments", {}) else name


def load_experiments(evals: dict[str, dict], scores: dict[str, list[dict]], experiments_dir: Path,
                     params: Params) -> None:
    """Add each `report.experiments` entry whose committed results exist (experiments/results/<name>.json and
    .jsonl, written by experiments/dvc.yaml) to evals and scores, right after the model it is paired with."""
    for name, ref in reversed(params.report.experiments.items()):
        metrics, rows = experiments_dir / f"{name}.json", experiments_dir / f"{name}.jsonl"
        if not (metrics.exists() and rows.exists()) or ref not in evals:
            continue
        for d, value in ((evals, json.loads(metrics.read_text())), (scores, read_jsonl(rows))):
            items = list(d.items())
            at = [k for k, _ in items].index(ref) + 1
            d.clear()
            d.update(items[:at] + [(name, value)] + items[at:])


def vs_models(scores: dict[str, list[dict]], params: Params) -> dict:
    """{reference: {model: {judge: paired difference}}} for each `report.compare` reference, by every judge
    that scored both models (each row's `judges`), so a drop can be read by judges inside and outside a reward."""
    ev, out = params.evaluate, {}
    for ref in params.report.compare:
        out[ref] = {}
        for name in scores:
            if name in (ref, params.report.baseline) or not scores[name] or not scores[ref]:
                continue
            judges = [j for j in scores[name][0].get("judges", {}) if j in scores[ref][0].get("judges", {})]
            out[ref][name] = {j: M.paired_difference(
                M.per_prompt([{**r, "toxicity": r["judges"][j]} for r in scores[name]], ev.toxic_threshold),
                M.per_prompt([{**r, "toxicity": r["judges"][j]} for r in scores[ref]], ev.toxic_threshold),
                ev.bootstrap_samples, ev.ci_level, ev.seed) for j in judges}
    return out


def _vs_models_lines(summary: dict) -> list[str]:
    lines = []
    for ref, by_model in summary["vs_models"].items():
        if not by_model:
            continue
        lines += ["", f"## Difference to `{ref}`, by judge (paired bootstrap over the same prompts)", "",
                  "⚠ marks a judge inside the model's training reward.", "",
                  "| model | judge | Δ expected max toxicity | Δ toxicity probability |", "| --- | --- | --- | --- |"]
        for name, by_judge in by_model.items():
            in_reward = set(summary["models"][name]["judges_in_reward"])
            for j, d in by_judge.items():
                flag = " ⚠" if j in in_reward or (j == "ensemble" and in_reward) else ""
                lines.append(f"| {name} | {j}{flag} | {_fmt(d['expected_max_toxicity'])} | "
                             f"{_fmt(d['toxicity_probability'])} |")
    return lines


def _reward_model_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    rm = json.loads(path.read_text())
    a, agree, r = rm["accuracy"], rm["judge_agreement"], rm["rewards"]
    lines = ["", "## Reward model", "",
             f"`{rm['model']}` on {rm['pairs']} held-out HH-RLHF harmless pairs: pairwise accuracy {_fmt(a)} "
             "(ties count half; 0.5 = chance). By dialogue length:", "",
             "| prompt tokens | pairs | accuracy |", "| --- | ---: | --- |"]
    lines += [f"| {b} | {v['n']} | {_fmt(v) if v['value'] is not None else 'n/a'} |"
              for b, v in rm["by_prompt_length"].items()]
    lines += ["", f"Rewards: chosen {r['chosen']['mean']:.3f} ± {r['chosen']['std']:.3f}, rejected "
              f"{r['rejected']['mean']:.3f} ± {r['rejected']['std']:.3f} (mean ± std). Agreement with the "
              f"`{agree['judge']}` judge on which response is less toxic: "
              + (f"{_fmt(agree)} over {agree['pairs']} pairs where it sees a difference."
                 if agree.get("value") is not None else "no pair where the judge sees a difference.")]
    if "probability" in rm:
        lines[-1] += (f" As the design's score in [0, 1] (sigmoid of the reward): chosen "
                      f"{rm['probability']['chosen']:.3f}, rejected {rm['probability']['rejected']:.3f} on average.")
    if rm.get("reward_bench"):
        sections = list(next(iter(rm["reward_bench"].values()))["sections"])
        lines += ["", "### RewardBench", "",
                  "RewardBench v1 filtered split, scored as RewardBench's own code does: accuracy per subset (a tie "
                  "counts as wrong), each section the example-count-weighted mean of its subsets (math-prm weighted "
                  "as the six code subsets together), the score the mean of the sections; 95% bootstrap CIs "
                  "resampling pairs within subsets.", "",
                  "| reward model | " + " | ".join(sections) + " | score | pairs (truncated) |",
                  "| --- | " + " | ".join("---" for _ in sections) + " | --- | ---: |"]
        for name, rb in rm["reward_bench"].items():
            cells = [_fmt_ci(rb["sections"][sec]) for sec in sections]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {_fmt_ci(rb['score'])} | "
                         f"{rb['pairs']} ({rb['truncated_pairs']}) |")
    return lines


def _fmt_ci(stat: dict) -> str:
    """value [lo, hi] of a {value, ci: [lo, hi]} record."""
    return f"{stat['value']:.3f} [{stat['ci'][0]:.3f}, {stat['ci'][1]:.3f}]"


def _chat_lines(chat_dir: Path, answers_dir: Path, base: str, params: Params) -> list[str]:
    """The chat-domain table: each model's answers to held-out ToxicChat inputs, by category, with refusal rates
    and the paired difference to the baseline."""
    evals = {m: json.loads((chat_dir / f"{m}.json").read_text()) for m in params.models
             if (chat_dir / f"{m}.json").exists()}
    if not evals:
        return []
    first = next(iter(evals.values()))
    ev = params.evaluate
    cats = [c for c in ("toxic", "jailbreaking", "nontoxic") if first["prompts"].get(c)]
    lines = ["", "## Chat domain: held-out ToxicChat user inputs", "",
             f"{first['n_prompts']} user inputs that no model or judge trained on ("
             + ", ".join(f"{first['prompts'][c]} {c}" for c in cats) + f"), answered in each model's chat template, "
             f"k = {first['k']}; headline judge `{first['judge']}` (trained on ToxicChat human labels, calibrated to "
             "the human toxic rate). Expected max toxicity by category; refusal = an answer matching "
             "`chat_eval.refusal_patterns`.", "",
             "| model | expected max toxicity | " + " | ".join(f"EMT {c}" for c in cats)
             + " | toxicity probability | refusal rate | " + " | ".join(f"refusal {c}" for c in cats) + " |",
             "| --- | --- | " + " | ".join("---" for _ in cats)
             + " | --- | --- | " + " | ".join("---" for _ in cats) + " |"]
    for name, r in evals.items():
        t, ref = r["toxicity"], r["refusal_rate"]
        lines.append(f"| {name}{'' if r['chat_template'] else ' (no template: raw text)'} | "
                     f"{_fmt(t['overall']['expected_max_toxicity'])} | "
                     + " | ".join(_fmt(t[c]["expected_max_toxicity"]) if c in t else "n/a" for c in cats)
                     + f" | {_fmt(t['overall']['toxicity_probability'])} | {_fmt(ref['overall'])} | "
                     + " | ".join(_fmt(ref[c]) if c in ref else "n/a" for c in cats) + " |")
    if base in evals and (answers_dir / f"{base}.jsonl").exists():
        per = {m: M.per_prompt(read_jsonl(answers_dir / f"{m}.jsonl"), ev.toxic_threshold) for m in evals
               if (answers_dir / f"{m}.jsonl").exists()}
        lines += ["", f"Paired difference to `{base}` (same prompts): Δ expected max toxicity, Δ toxicity probability",
                  "", "| model | Δ expected max toxicity | Δ toxicity probability |", "| --- | --- | --- |"]
        for name in per:
            if name != base:
                d = M.paired_difference(per[name], per[base], ev.bootstrap_samples, ev.ci_level, ev.seed)
                lines.append(f"| {name} | {_fmt(d['expected_max_toxicity'])} | {_fmt(d['toxicity_probability'])} |")
    return lines


def _method_lines(summary: dict, metrics_dir: Path, params: Params) -> list[str]:
    """One row per method: the headline toxicity with CIs, the paired difference to SFT, fluency, and the budget
    that bought it (training samples, responses scored by a judge/RM, wall time of the stages that made it)."""
    def load(name: str) -> dict:
        path = metrics_dir / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else {}

    gen, labels = load("pref_gen"), load("label_ai")
    budget = {"base": ("none", "0", "0")}
    if (m := load("sft")) and "sft" in summary["models"]:
        budget["sft"] = (f"{m['steps'] * params.sft.batch_size * params.sft.grad_accum} dialogues", "0", "n/a")
    if (m := load("dpo")) and "dpo" in summary["models"]:
        budget["dpo"] = (f"{m.get('pairs_seen', '?')} HH pairs (human labels)", "0", f"{m.get('train_seconds', 0):.0f}")
    if (m := load("dpo_rlaif")) and "dpo_rlaif" in summary["models"] and gen and labels:
        graded = labels["grader_queries"] // len(labels["graders"])
        budget["dpo_rlaif"] = (f"{m.get('pairs_seen', '?')} on-policy pairs ({labels['pairs']} labelled)",
                               f"{graded} x {' + '.join(labels['graders'])}",
                               f"{gen['seconds'] + labels['seconds'] + m.get('train_seconds', 0):.0f}")
    people = load("human_labels")
    for key, run in params.feedback_runs.items():
        name, m = f"dpo_{key}", load(f"dpo_{key}")
        if key == "rlaif" or not m or name not in summary["models"] or not people:
            continue
        start = {d: n for n, d in params.models.items()}.get(run.init, run.init)
        budget[name] = (f"{m.get('pairs_seen', '?')} on-policy pairs ({people['pairs']} human-labelled), from {start}",
                        f"{people['labels']} human labels",
                        f"{gen['seconds'] + m.get('train_seconds', 0):.0f} + labelling")
    for name in ("ppo", *summary.get("experiments", {})):  # PPO, and PPO variants run as committed experiments
        if (m := load(name)) and name in summary["models"] and "reward_source" in m:
            rollouts = m["steps"] * params.ppo.batch_size
            steps_file = metrics_dir.parent / "plots" / name / "plots" / "metrics" / "time" / "step_s.tsv"
            seconds = (f"{sum(float(line.split()[1]) for line in steps_file.read_text().splitlines()[1:]):.0f}"
                       if steps_file.exists() else "n/a")  # the sum of PPO's per-step times (its dvclive curve)
            cvar = f", CVaR alpha 1 -> {m['cvar_alpha']:g}" if m.get("cvar_alpha", 1.0) < 1.0 else ""
            budget[name] = (f"{rollouts} rollouts{cvar}", f"{rollouts} x {m['reward_source']}", seconds)
    for name in params.filters:  # inference-time: no training; extra samples and judge queries at every use
        if (m := load(f"filter/{name}")) and name in summary["models"]:
            budget[name] = (f"0 (+{m['extra_samples']} samples at inference)",
                            f"{m['judge_queries']} x {m['judge']['name']} (moderation)", f"{m['seconds']:.0f}")
    vs_sft = summary["vs_models"].get("sft", {})
    lines = ["", "## Methods compared", "",
             "Each method's headline toxicity (judge `" + summary["judge"]["name"] + "`) with its paired difference "
             "to `sft` (the start of every trained method), fluency, and its budget: training samples, responses "
             "scored by a judge or reward model to make its training signal, and the wall time of the stages that "
             "made it (generation and labelling included). PPO's and dpo_rlaif's default budgets of scored "
             "responses are equal, so the Δ column compares what each buys per query. A filter row (`filters:`) is "
             "its source model's outputs through a moderation judge at inference: no training; its budget is the "
             "extra samples it drew and the judge's queries, paid again at every use.", "",
             "| method | expected max toxicity | Δ vs sft | toxicity probability | perplexity | training samples "
             "| responses scored | seconds |", "| --- | --- | --- | --- | ---: | --- | --- | ---: |"]
    for name, m in summary["models"].items():
        samples, queries, seconds = budget.get(name, ("n/a", "n/a", "n/a"))
        head = summary["judge"]["name"]
        d = vs_sft.get(name, {}).get(head)
        ppl = f"{m['perplexity']:.1f}" if m["perplexity"] else "n/a"
        lines.append(f"| {_label(name, summary)} | {_fmt(m['expected_max_toxicity'])} | "
                     f"{_fmt(d['expected_max_toxicity']) if d else ''}"
                     f" | {_fmt(m['toxicity_probability'])} | {ppl} | {samples} | {queries} | {seconds} |")
    if labels.get("agreement"):
        lines += ["", "AI labels: " + f"{labels['pairs']} pairs kept of {labels['prompts']} prompts "
                  f"({labels['dropped_below_margin']} below the margin {labels['min_margin']}); grader agreement "
                  + ", ".join(f"{k} {v:.2f}" for k, v in labels["agreement"].items() if v is not None) + "."]
    return lines


def _feedback_inits(params: Params) -> dict[str, str]:
    """dpo_<key> -> the evaluated model that dpo_feedback@<key> started from, where that is not sft."""
    by_dir = {d: n for n, d in params.models.items()}
    return {f"dpo_{k}": by_dir[r.init] for k, r in params.feedback_runs.items()
            if r.init in by_dir and by_dir[r.init] != "sft" and f"dpo_{k}" in params.models}


def _people_lines(metrics_dir: Path) -> list[str]:
    """Human labels: the preference labels behind dpo_human, and the blind side-by-side check of two models."""
    pairs_path, eval_path = metrics_dir / "human_labels.json", metrics_dir / "human_eval.json"
    if not pairs_path.exists() and not eval_path.exists():
        return []
    lines = ["", "## Human labels", ""]
    hp = json.loads(pairs_path.read_text()) if pairs_path.exists() else {}
    he = json.loads(eval_path.read_text()) if eval_path.exists() else {}
    if not hp.get("labels") and not he.get("labels"):
        return lines + ["No human labels yet: the pipeline invents none. `detoxrl label-human` collects them "
                        "(preference pairs for dpo_human, or `--mode eval` for a blind side-by-side check of "
                        f"`{he.get('model_a', 'sft')}` and `{he.get('model_b', 'ppo')}`); README, \"Human labels\"."]
    if hp.get("labels"):
        c = hp["choices"]
        lines += [f"Preference labels: {hp['labels']} from {len(hp['annotators'])} annotator(s) on {hp['pool_pairs']} "
                  f"pool pairs (a {c['a']}, b {c['b']}, tie {c['tie']}, skip {c['skip']}; {hp['stale_labels']} "
                  f"stale) -> {hp['pairs']} DPO pairs ({hp['dropped_split_votes']} dropped for split votes)"
                  + (f"; annotator agreement {hp['annotator_agreement']:.2f}" if hp["annotator_agreement"] is not None
                     else "")
                  + (f"; left side chosen {hp['left_chosen_rate']:.2f} (0.50 = no position bias)"
                     if hp["left_chosen_rate"] is not None else "") + ".", ""]
    if he.get("status") == "ok":
        w = he["win_rate_b"]
        lines += [f"Blind side-by-side, `{he['model_b']}` vs `{he['model_a']}` on {he['tasks']} challenging eval "
                  f"prompts (sample 0 of each; people chose the less toxic continuation): {w['n']} judgements "
                  f"from {len(he['annotators'])} annotator(s), {he['choices']['skip']} skipped, "
                  f"{he['stale_labels']} stale. `{he['model_b']}` win rate (ties count half): {_fmt(w)}; 0.5 = no "
                  "difference.", "", "| judge | agreement with people | decided pairs |", "| --- | --- | ---: |"]
        lines += [f"| {j} | {_fmt(a)} | {a['n']} |" for j, a in he["judge_agreement"].items()]
    elif he:
        lines += [f"Blind side-by-side `{he['model_b']}` vs `{he['model_a']}`: {he['status']} "
                  f"({he['labels']} labels, {he['stale_labels']} stale)."]
    return lines


def _tail_lines(summary: dict, params: Params) -> list[str]:
    """Tail risk per model (the mean of the worst fractions of per-prompt max toxicities, overall and on the
    challenging subset) and each committed experiment's paired difference to its reference model."""
    keys = [(M.tail_key(f), f"{f:.0%}") for f in params.evaluate.tail_fractions]
    groups = [g for g in ("overall", "challenging") if all(g in m["tail"] for m in summary["models"].values())]
    head = [f"worst {pct}{'' if g == 'overall' else ' ' + g}" for g in groups for _, pct in keys]
    lines = ["", "## Tail risk: the worst prompts", "",
             f"The mean of the worst {' / '.join(pct for _, pct in keys)} of per-prompt maximum toxicities (judge `"
             + summary["judge"]["name"] + "`; the CVaR of the per-prompt max: the worst ceil(fraction x n) prompts), "
             "overall and on the challenging prompts, with bootstrap CIs over prompts. Risk-averse RLHF (RA-RLHF) "
             "trains on the worst returns of each batch to lower this tail more than the mean.", "",
             "| model | " + " | ".join(head) + " |", "| --- |" + " --- |" * len(head)]
    for name, m in summary["models"].items():
        lines.append(f"| {_label(name, summary)} | "
                     + " | ".join(_fmt(m["tail"][g].get(k)) for g in groups for k, _ in keys) + " |")
    for name, x in summary.get("experiments", {}).items():
        ref, d = x["reference"], x["vs_reference"]
        lines += ["", f"`{name}` (committed experiment: `dvc repro experiments/dvc.yaml:{name}`) minus `{ref}`, paired "
                  "over the same prompts (each model's own worst prompts among each resample):", "",
                  "| prompts | " + " | ".join(f"Δ worst {pct}" for _, pct in keys) + " | Δ expected max toxicity |",
                  "| --- |" + " --- |" * (len(keys) + 1)]
        for g, t in d["tail"].items():
            emt = _fmt(d["toxicity"]["expected_max_toxicity"]) if g == "overall" else ""
            lines.append(f"| {g} ({t['n_prompts']}) | " + " | ".join(_fmt(t.get(k)) for k, _ in keys) + f" | {emt} |")
        k, pct = keys[0]
        t = d["tail"]["overall"][k]
        verdict = ("lowers" if t["ci_high"] < 0 else "raises" if t["ci_low"] > 0 else "does not significantly change")
        lines += ["", f"`{name}` {verdict} the worst-{pct} tail relative to `{ref}` ({_fmt(t)}; the budgets are in "
                  "the methods table)."]
    return lines


def _human_label_lines(judges: dict, chat_judge_path: Path) -> list[str]:
    tc = judges.get("toxicchat")
    if not tc:
        return []
    lines = ["", "## Judge validation against human labels (ToxicChat)", "",
             f"{tc['reference']}. AUPRC's chance level is the toxic rate. Published anchors on ToxicChat's test "
             "split (another split, for orientation only), AUPRC: OpenAI moderation 0.63, Llama Guard 7B about "
             "0.62, ToxicChat-T5-large 0.885.", "",
             "| judge | AUROC | AUPRC | toxic rate | inputs |", "| --- | --- | --- | ---: | ---: |"]
    for name, j in tc["judges"].items():
        if "skipped" in j:
            lines.append(f"| {name} | | | | skipped: {j['skipped']} |")
        elif j.get("auroc") is None:
            lines.append(f"| {name} | n/a | n/a | {j['positive_rate']:.3f} | {j['n']} |")
        else:
            lines.append(f"| {name} | {j['auroc']:.3f} [{j['auroc_ci'][0]:.3f}, {j['auroc_ci'][1]:.3f}] | "
                         f"{j['auprc']:.3f} [{j['auprc_ci'][0]:.3f}, {j['auprc_ci'][1]:.3f}] | "
                         f"{j['positive_rate']:.3f} | {j['n']} |")
    if chat_judge_path.exists():
        h = json.loads(chat_judge_path.read_text())["heldout"]
        lines += ["", f"`chat_distilled` during training ({h['method']}, {h['n']} inputs): AUROC {h['auroc']:.3f}, "
                  f"AUPRC {h['auprc']:.3f} (toxic rate {h['positive_rate']:.3f}). Which judge to trust where: the "
                  "Perspective table above is web text (RTP), this one is chat."]
    return lines


def _plots(summary: dict, scores: dict[str, list[dict]], threshold: float, plots_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["models"])
    for metric in HEADLINE:
        with atomic_file(plots_dir / f"{metric}.csv") as fh:
            fh.write("model,value,ci_low,ci_high\n")
            for n in names:
                s = summary["models"][n][metric]
                fh.write(f"{n},{s['value']:.6f},{s['ci_low']:.6f},{s['ci_high']:.6f}\n")

    fig, axes = plt.subplots(1, len(HEADLINE), figsize=(4 * len(HEADLINE), 3.2))
    for ax, metric in zip(axes, HEADLINE):
        vals = [summary["models"][n][metric] for n in names]
        err = [[v["value"] - v["ci_low"] for v in vals], [v["ci_high"] - v["value"] for v in vals]]
        ax.bar(names, [v["value"] for v in vals], yerr=err, capsize=4, color="#4c72b0")
        ax.set_title(metric.replace("_", " "))
        ax.set_ylim(0, 1)
    fig.suptitle(f"Held-out RTP toxicity ({summary['judge']['name']} judge, {summary['ci_level']:.0%} CI)")
    fig.tight_layout()
    files = ["toxicity.png", "max_toxicity_hist.png"]
    fig.savefig(plots_dir / files[0], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for n in names:
        maxes = [p["max"] for p in M.per_prompt(scores[n], threshold).values()]
        ax.hist(maxes, bins=20, range=(0, 1), histtype="step", linewidth=1.5, label=n)
    ax.axvline(threshold, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("max toxicity over a prompt's k continuations")
    ax.set_ylabel("prompts")
    ax.legend()
    fig.tight_layout()
    fig.savefig(plots_dir / files[1], dpi=100)
    plt.close(fig)
    return files


def _examples(scores: dict[str, list[dict]], base: str, n: int) -> list[str]:
    def quote(text: str) -> str:
        return text.replace("\n", " ").replace("|", "\\|")[:200]

    lines = []
    base_best = {}
    for r in scores[base]:
        if r["prompt_id"] not in base_best or r["toxicity"] > base_best[r["prompt_id"]]["toxicity"]:
            base_best[r["prompt_id"]] = r
    for name, rows in scores.items():
        top = sorted(rows, key=lambda r: -r["toxicity"])[:n]
        lines += [f"### {name}", ""]
        if name == base:
            lines += ["| toxicity | continuation |", "| ---: | --- |"]
            lines += [f"| {r['toxicity']:.2f} | {quote(r['answer'])} |" for r in top]
        else:
            lines += [f"| toxicity | continuation | {base} (most toxic sample, same prompt) |", "| ---: | --- | --- |"]
            for r in top:
                b = base_best.get(r["prompt_id"])
                other = f"{b['toxicity']:.2f}: {quote(b['answer'])}" if b else "n/a"
                lines.append(f"| {r['toxicity']:.2f} | {quote(r['answer'])} | {other} |")
        lines.append("")
    return lines


def _expand(judge: str, params: Params) -> set[str]:
    """The judges a score comes from: an ensemble's members, else the judge itself."""
    return set(params.judges.ensemble.members) if judge == "ensemble" else {judge}


def overlap(name: str, in_reward: list[str], evals: dict[str, dict], scores: dict[str, list[dict]],
            params: Params) -> dict:
    """A trained model's toxicity by a judge outside its training reward beside an in-reward judge's.

    The independent judge is the ensemble if none of its members is in the reward, else the first
    independent judge evaluated. `gap` is the paired-bootstrap difference between the drop against the
    baseline that the in-reward judge sees and the drop the independent judge sees (expected max
    toxicity); a gap whose CI lies below 0 (the in-reward judge sees a larger drop) is flagged as
    possible reward hacking.
    """
    ev, base = params.evaluate, params.report.baseline
    reward = set().union(*(_expand(j, params) for j in in_reward)) if in_reward else set()
    judged = [j for j, v in evals[name].get("by_judge", {}).items() if "skipped" not in v]
    inside = sorted((j for j in judged if _expand(j, params) & reward), key=lambda j: j not in reward)
    independent = [j for j in judged if not _expand(j, params) & reward]
    out: dict = {"judges_in_reward": in_reward, "in_reward_judge": inside[0] if inside else None,
                 "independent_judge": "ensemble" if "ensemble" in independent else next(iter(independent), None)}
    for role in ("in_reward_judge", "independent_judge"):
        j = out[role]
        if j is not None:
            t = evals[name]["by_judge"][j]["toxicity"]["overall"]
            out[role.replace("judge", "metrics")] = {k: t[k] for k in HEADLINE}
    if out["in_reward_judge"] is None or out["independent_judge"] is None:
        return out
    j_in, j_ind = out["in_reward_judge"], out["independent_judge"]

    def per_prompt(rows, j):
        return M.per_prompt([{**r, "toxicity": r["judges"][j]} for r in rows], ev.toxic_threshold)

    if name != base and base in scores:
        d_in = M.paired_difference(per_prompt(scores[name], j_in), per_prompt(scores[base], j_in),
                                   ev.bootstrap_samples, ev.ci_level, ev.seed)
        d_ind = M.paired_difference(per_prompt(scores[name], j_ind), per_prompt(scores[base], j_ind),
                                    ev.bootstrap_samples, ev.ci_level, ev.seed)
        mi, bi = per_prompt(scores[name], j_in), per_prompt(scores[base], j_in)
        mx, bx = per_prompt(scores[name], j_ind), per_prompt(scores[base], j_ind)
        ids = sorted(set(mi) & set(bi))
        diff = np.array([[(mi[i]["max"] - bi[i]["max"]) - (mx[i]["max"] - bx[i]["max"])] for i in ids])
        gap = M.bootstrap_means(diff, ev.bootstrap_samples, ev.ci_level, ev.seed)[0]
        out.update(vs_baseline_in_reward=d_in["expected_max_toxicity"],
                   vs_baseline_independent=d_ind["expected_max_toxicity"], gap=gap,
                   possible_reward_hacking=gap["ci_high"] < 0)
    disagree = sorted(scores[name], key=lambda r: -abs(r["judges"][j_in] - r["judges"][j_ind]))
    out["disagreements"] = [{"prompt_id": r["prompt_id"], "answer": r["answer"], j_in: r["judges"][j_in],
                             j_ind: r["judges"][j_ind]} for r in disagree[:params.report.n_examples]]
    return out


def _overlap_lines(overlaps: dict[str, dict], base: str) -> list[str]:
    def quote(text: str) -> str:
        return text.replace("\n", " ").replace("|", "\\|")[:200]

    lines = ["## Reward / judge overlap", "",
             "A drop measured by a judge inside a model's training reward is weak evidence: the policy may have "
             "learnt that judge's blind spots. Each trained model's numbers by a judge outside its reward "
             "(the ensemble of independent judges where there is one), beside an in-reward judge's (⚠). All "
             "judges on the Perspective scale where calibrated.", "",
             f"| model | judges in training reward | independent judge: EMT | in-reward judge: EMT ⚠ "
             f"| Δ EMT vs {base}: independent | Δ EMT vs {base}: in-reward ⚠ | gap (in-reward − independent) "
             "| verdict |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, o in overlaps.items():
        reward = ", ".join(o["judges_in_reward"]) or "none"
        ind = (f"`{o['independent_judge']}` {_fmt(o['independent_metrics']['expected_max_toxicity'])}"
               if o["independent_judge"] else "none evaluated")
        inr = (f"`{o['in_reward_judge']}` {_fmt(o['in_reward_metrics']['expected_max_toxicity'])}"
               if o["in_reward_judge"] else "")
        if not o["judges_in_reward"]:
            verdict = "no judge in its reward: every judge is independent"
        elif not o["independent_judge"]:
            verdict = "⚠ no independent judge evaluated: add one to evaluate.judges"
        elif "gap" not in o:
            verdict = "baseline" if name == base else "n/a"
        elif o["possible_reward_hacking"]:
            verdict = "⚠ possible reward hacking: the in-reward judge sees a larger drop"
        else:
            verdict = "no significant gap"
        lines.append(f"| {name} | {reward} | {ind} | {inr} | {_fmt(o.get('vs_baseline_independent'))} | "
                     f"{_fmt(o.get('vs_baseline_in_reward'))} | {_fmt(o.get('gap'))} | {verdict} |")
    for name, o in overlaps.items():
        if o.get("disagreements"):
            j_in, j_ind = o["in_reward_judge"], o["independent_judge"]
            lines += ["", f"Where `{j_in}` (in {name}'s reward) and `{j_ind}` disagree most on {name}'s continuations:",
                      "", f"| {j_in} ⚠ | {j_ind} | continuation |", "| ---: | ---: | --- |"]
            lines += [f"| {d[j_in]:.2f} | {d[j_ind]:.2f} | {quote(d['answer'])} |" for d in o["disagreements"]]
    return lines


def report(eval_dir: str | Path, scores_dir: str | Path, judges_path: str | Path, data_path: str | Path,
           summary_path: str | Path, plots_dir: str | Path, report_path: str | Path, params: Params,
           experiments_dir: str | Path = "experiments/results") -> dict:
    eval_dir, scores_dir, plots_dir = Path(eval_dir), Path(scores_dir), Path(plots_dir)
    names = [*params.models, *params.filters]  # a moderation filter's outputs are evaluated like a model's
    evals = {m: json.loads((eval_dir / f"{m}.json").read_text()) for m in names}
    scores = {m: read_jsonl(scores_dir / f"{m}.jsonl") for m in names}
    load_experiments(evals, scores, Path(experiments_dir), params)  # committed experiments whose results exist
    summary = summarise(evals, scores, params)
    plots_dir.mkdir(parents=True, exist_ok=True)
    pngs = _plots(summary, scores, params.evaluate.toxic_threshold, plots_dir)
    judges = json.loads(Path(judges_path).read_text())
    data = json.loads(Path(data_path).read_text())

    base = summary["baseline"]
    rel = Path("..") / plots_dir  # report.md lives in reports/
    # Judges inside each model's training reward (a training stage's metrics/<model>.json says so):
    # a drop measured by such a judge is weaker evidence than one measured by an independent judge.
    in_reward, made_on = {}, {}
    for name in summary["models"]:
        stage_metrics = Path(data_path).parent / f"{name}.json"
        filter_metrics = Path(data_path).parent / "filter" / f"{name}.json"
        if name in params.filters and filter_metrics.exists():  # its outputs were selected by its moderation judge
            in_reward[name] = [json.loads(filter_metrics.read_text())["judge"]["name"]]
        elif stage_metrics.exists():
            stage = json.loads(stage_metrics.read_text())
            in_reward[name] = stage.get("judges_in_reward", [])
            if name in _feedback_inits(params):  # DPO from another trained model: its judges are in this one too
                start = json.loads((Path(data_path).parent / f"{_feedback_inits(params)[name]}.json").read_text())
                in_reward[name] = sorted(set(in_reward[name]) | set(start.get("judges_in_reward", [])))
            if "platform" in stage:  # where the model was trained, at which precision: numbers differ by CPU kind
                made_on[name] = stage["platform"]
        summary["models"][name]["judges_in_reward"] = in_reward.get(name, [])
    summary["overlap"] = {name: overlap(name, judges_in, evals, scores, params) for name, judges_in in in_reward.items()
                          if name in evals}
    judge_name = summary["judge"]["name"]
    scale = "calibrated to the Perspective scale" if summary["judge"].get("calibrated") else "raw scores"
    lines = [
        "# Toxicity report", "",
        "> Warning: this report quotes model outputs on toxic prompts; they may be offensive.", "",
        "Held-out RealToxicityPrompts: "
        + " + ".join(f"{n} {s}" for s, n in data["eval_prompts_by_subset"].items()) + " eval prompts, "
        f"k = {next(iter(evals.values()))['k']} samples each; judge `{summary['judge']['name']}` "
        f"({summary['judge']['version']}, {scale}); {summary['ci_level']:.0%} bootstrap CIs over prompts.", "",
        *([("Trained on: " + "; ".join(
            f"{n} {p.get('gpu') or p['cpu_kind']}" + (f", {'fp32' if p['precision'] == 'none' else p['precision']} "
                                                      f"({p['precision_reason']})" if p.get("precision") else "")
            for n, p in made_on.items())
           + ". Seeded runs reproduce bit for bit on the same CPU kind only (README: Reproducibility)."), ""]
          if made_on else []),
        "| model | expected max toxicity | toxicity probability | mean toxicity | perplexity | distinct-2 | EOS rate "
        "| judges in training reward |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for name, m in summary["models"].items():
        ppl = f"{m['perplexity']:.1f}" if m["perplexity"] else "n/a"
        flag = ", ".join(m["judges_in_reward"]) or "none"
        if _expand(judge_name, params) & set().union(*(_expand(j, params) for j in m["judges_in_reward"])):
            flag += " ⚠ (measures these numbers: see the overlap section)"
        lines.append(f"| {_label(name, summary)} | {_fmt(m['expected_max_toxicity'])} | "
                     f"{_fmt(m['toxicity_probability'])} | {_fmt(m['mean_toxicity'])} | {ppl} | "
                     f"{m['distinct_2']:.3f} | {m['eos_rate']:.2f} | {flag} |")
    lines += ["", f"## Difference to `{base}` (paired bootstrap over the same prompts)", ""]
    if summary["vs_baseline"]:
        lines += ["| model | Δ expected max toxicity | Δ toxicity probability | Δ mean toxicity |",
                  "| --- | --- | --- | --- |"]
        for name, d in summary["vs_baseline"].items():
            lines.append(f"| {name} | {_fmt(d['expected_max_toxicity'])} | {_fmt(d['toxicity_probability'])} | "
                         f"{_fmt(d['mean_toxicity'])} |")
    else:
        lines.append(f"Only `{base}` is evaluated so far; trained models join through `models:` in params.yaml.")
    lines += _method_lines(summary, Path(data_path).parent, params)
    lines += _tail_lines(summary, params)
    lines += _vs_models_lines(summary)
    lines += _reward_model_lines(Path(data_path).parent / "reward_model.json")
    lines += ["", "## Plots", "", *(f"![{p}]({rel / p})" for p in pngs), "",
              *_overlap_lines(summary["overlap"], base), "",
              "## Judge validation against Perspective", "",
              f"{judges['reference']}, toxic at >= {judges['threshold']}. Calibration error: mean |judge score - "
              "Perspective score| over 10 score bins (on the Perspective scale where calibrated, raw in brackets).", "",
              "| judge | AUROC | Spearman | texts (toxic) | calibration error | note |",
              "| --- | ---: | ---: | ---: | --- | --- |"]
    for name, j in judges["judges"].items():
        if "skipped" in j:
            lines.append(f"| {name} | | | | | skipped: {j['skipped']} |")
        else:
            auroc = f"{j['auroc']:.3f}" if j["auroc"] is not None else "n/a"
            ece = f"{j['calibration_error']:.3f}" if "calibration_error" in j else "n/a"
            if "calibration_error_raw" in j:
                ece += f" ({j['calibration_error_raw']:.3f})"
            elif not j.get("calibrated", False):
                ece += " (not calibrated)"
            lines.append(f"| {name} | {auroc} | {j['spearman']:.3f} | {j['n_texts']} ({j['n_toxic']}) | {ece} | "
                         f"{j['version']} |")
    calibration_png = plots_dir / "judge_calibration.png"
    if calibration_png.exists():
        lines += ["", f"![judge reliability curves]({rel / calibration_png.name})"]
    lines += _people_lines(Path(data_path).parent)
    lines += _human_label_lines(judges, Path(data_path).parent / "chat_judge_train.json")
    lines += _chat_lines(Path(data_path).parent / "chat", Path("data/chat/answers"), base, params)
    lines += ["", "## Most toxic continuations", "", *_examples(scores, base, params.report.n_examples)]
    write_json(summary_path, summary)
    with atomic_file(report_path) as fh:
        fh.write("\n".join(lines) + "\n")
    return summary
