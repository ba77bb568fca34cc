"""The `report` stage: every model side by side, against the baseline, with CIs.

Outputs:
  metrics/summary.json           models x metrics (value + CI) and each model's paired difference
                                 to the baseline (stable keys: what `dvc metrics diff` compares)
  plots/<metric>.csv             one row per model, for `dvc plots` (bars)
  plots/toxicity.png, plots/max_toxicity_hist.png
  reports/report.md              the table, the plots, judge validation, most toxic continuations
"""

from __future__ import annotations

import json
from pathlib import Path

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
    return {"baseline": base, "judge": next(iter(evals.values()))["judge"], "ci_level": ev.ci_level,
            "models": models, "vs_baseline": vs}


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


def report(eval_dir: str | Path, scores_dir: str | Path, judges_path: str | Path, data_path: str | Path,
           summary_path: str | Path, plots_dir: str | Path, report_path: str | Path, params: Params) -> dict:
    eval_dir, scores_dir, plots_dir = Path(eval_dir), Path(scores_dir), Path(plots_dir)
    evals = {m: json.loads((eval_dir / f"{m}.json").read_text()) for m in params.models}
    scores = {m: read_jsonl(scores_dir / f"{m}.jsonl") for m in params.models}
    summary = summarise(evals, scores, params)
    plots_dir.mkdir(parents=True, exist_ok=True)
    pngs = _plots(summary, scores, params.evaluate.toxic_threshold, plots_dir)
    judges = json.loads(Path(judges_path).read_text())
    data = json.loads(Path(data_path).read_text())

    base = summary["baseline"]
    rel = Path("..") / plots_dir  # report.md lives in reports/
    # Judges inside each model's training reward (a training stage's metrics/<model>.json says so):
    # a drop measured by such a judge is weaker evidence than one measured by an independent judge.
    in_reward = {}
    for name in summary["models"]:
        stage_metrics = Path(data_path).parent / f"{name}.json"
        if stage_metrics.exists():
            in_reward[name] = json.loads(stage_metrics.read_text()).get("judges_in_reward", [])
        summary["models"][name]["judges_in_reward"] = in_reward.get(name, [])
    judge_name = summary["judge"]["name"]
    lines = [
        "# Toxicity report", "",
        "> Warning: this report quotes model outputs on toxic prompts; they may be offensive.", "",
        "Held-out RealToxicityPrompts: "
        + " + ".join(f"{n} {s}" for s, n in data["eval_prompts_by_subset"].items()) + " eval prompts, "
        f"k = {next(iter(evals.values()))['k']} samples each; judge `{summary['judge']['name']}` "
        f"({summary['judge']['version']}); {summary['ci_level']:.0%} bootstrap CIs over prompts.", "",
        "| model | expected max toxicity | toxicity probability | mean toxicity | perplexity | distinct-2 | EOS rate "
        "| judges in training reward |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for name, m in summary["models"].items():
        ppl = f"{m['perplexity']:.1f}" if m["perplexity"] else "n/a"
        flag = ", ".join(m["judges_in_reward"]) or "none"
        if judge_name in m["judges_in_reward"]:
            flag += " ⚠ (the headline judge: possible reward hacking)"
        lines.append(f"| {name} | {_fmt(m['expected_max_toxicity'])} | {_fmt(m['toxicity_probability'])} | "
                     f"{_fmt(m['mean_toxicity'])} | {ppl} | {m['distinct_2']:.3f} | {m['eos_rate']:.2f} | {flag} |")
    flagged = [n for n, m in summary["models"].items() if judge_name in m["judges_in_reward"]]
    if flagged:
        lines += ["", f"⚠ {', '.join(flagged)} trained against the `{judge_name}` judge that measures these numbers; "
                  "confirm the drop with a judge outside the reward (set `evaluate.judge`, e.g. `detoxify` or "
                  "`openai` where the network allows; see judge validation below)."]
    lines += ["", f"## Difference to `{base}` (paired bootstrap over the same prompts)", ""]
    if summary["vs_baseline"]:
        lines += ["| model | Δ expected max toxicity | Δ toxicity probability | Δ mean toxicity |", "| --- | --- | --- | --- |"]
        for name, d in summary["vs_baseline"].items():
            lines.append(f"| {name} | {_fmt(d['expected_max_toxicity'])} | {_fmt(d['toxicity_probability'])} | "
                         f"{_fmt(d['mean_toxicity'])} |")
    else:
        lines.append(f"Only `{base}` is evaluated so far; trained models join through `models:` in params.yaml.")
    lines += ["", "## Plots", "", *(f"![{p}]({rel / p})" for p in pngs), "",
              "## Judge validation against Perspective", "",
              f"{judges['reference']}, toxic at >= {judges['threshold']}.", "",
              "| judge | AUROC | Spearman | texts (toxic) | note |", "| --- | ---: | ---: | ---: | --- |"]
    for name, j in judges["judges"].items():
        if "skipped" in j:
            lines.append(f"| {name} | | | | skipped: {j['skipped']} |")
        else:
            auroc = f"{j['auroc']:.3f}" if j["auroc"] is not None else "n/a"
            lines.append(f"| {name} | {auroc} | {j['spearman']:.3f} | {j['n_texts']} ({j['n_toxic']}) | {j['version']} |")
    lines += ["", "## Most toxic continuations", "", *_examples(scores, base, params.report.n_examples)]
    write_json(summary_path, summary)
    with atomic_file(report_path) as fh:
        fh.write("\n".join(lines) + "\n")
    return summary
