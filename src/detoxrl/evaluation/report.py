"""The `report` stage: every method side by side, against the baseline, with intervals over seeds and prompts.

The rows are params.yaml's `models:` (trained once, or not at all), `seeded:` (trained once per seed of `seeds`),
`filters:` (moderation at inference) and the committed experiments of `report.experiments` whose results exist.
What a row's model is (its method, training signal, judges inside it, budget, platform) comes from its model card
(metrics/cards/<run>.json, src/detoxrl/cards.py): no method is known here by name.

A seeded row's value is the mean over its seeds; its intervals come from the two-way (seeds x prompts) bootstrap
of evaluation/metrics.py, and so do its verdicts (significant or not, reward-hacking gap, tail). A row trained once
has a prompt-only interval, and the tables say so.

Outputs:
  metrics/summary.json           rows x metrics (value + CI), each seed's value, and each row's paired difference
                                 to the baseline (stable keys: what `dvc metrics diff` compares)
  plots/<metric>.csv             one row per method, for `dvc plots` (bars)
  plots/toxicity.png, plots/max_toxicity_hist.png
  reports/report.md              the tables, the plots, judge validation, reward/judge overlap,
                                 most toxic continuations, tail risk
Committed experiments (`report.experiments`, run by experiments/dvc.yaml, never by the default `dvc repro`) join
every table where their results exist (experiments/results/<name>/s<seed>.json|jsonl, cards in
experiments/results/cards), labelled as such. They are not declared deps of the report stage (a declared dep on
them would pull the experiment into the default `dvc repro`): after rerunning one, `dvc repro --force
--single-item report`. An experiment whose results were scored on other eval prompts than the row it is paired with
(the prompts changed since it ran: another profile, base model or tokenizer) joins no table: it is named stale, with
the command that reruns it, in reports/report.md and in metrics/summary.json (`stale_experiments`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..cards import read_card
from ..io import atomic_file, read_jsonl, write_json
from ..params import seeded_name
from . import metrics as M

if TYPE_CHECKING:  # the type alone: a stage never imports the whole schema (stage_code skips these imports)
    from ..schema import Params

HEADLINE = ("expected_max_toxicity", "toxicity_probability", "mean_toxicity")


@dataclass
class Row:
    """One method of the report: its runs (one per seed, or one), their evaluations, scores and cards."""
    name: str
    runs: list[str]
    kind: str  # model | seeded | filter | experiment
    seeds: list[int] | None = None
    reference: str | None = None  # experiments: the row it is paired with
    evals: list[dict] = field(default_factory=list)
    scores: list[list[dict]] = field(default_factory=list)
    cards: list[dict] = field(default_factory=list)

    @property
    def seeded(self) -> bool:
        return self.seeds is not None

    @property
    def judges(self) -> list[str]:
        return sorted({j for c in self.cards for j in c["judges"]})


def refresh_command(name: str) -> str:
    """What brings a committed experiment's results up to date and into the report (experiments/dvc.yaml's stage
    group `name`, one stage per seed; the report does not depend on the experiments, so it is forced after)."""
    return f"dvc repro experiments/dvc.yaml:{name} && dvc repro --force --single-item report"


def load_rows(params: Params, eval_dir: Path, scores_dir: Path, cards_dir: Path, experiments_dir: Path
              ) -> tuple[dict[str, Row], dict[str, dict]]:
    """The report's rows, and the committed experiments left out as stale: {name: {reference, reason, refresh}}.

    An experiment's committed results belong to the eval prompts it ran on: where they differ from its reference
    row's (another profile, base model or tokenizer since), no table can pair them, so it is left out of every
    table, interval and summary and named stale with the command that reruns it."""
    rows: dict[str, Row] = {n: Row(n, [n], "model") for n in params.models}
    rows |= {m: Row(m, [seeded_name(m, s) for s in params.seeds], "seeded", list(params.seeds)) for m in params.seeded}
    rows |= {n: Row(n, [n], "filter") for n in params.filters}
    for row in rows.values():
        for run in row.runs:
            row.evals.append(json.loads((eval_dir / f"{run}.json").read_text()))
            row.scores.append(read_jsonl(scores_dir / f"{run}.jsonl"))
            row.cards.append(read_card(run, cards_dir))
    stale: dict[str, dict] = {}
    for name, ref in reversed(params.report.experiments.items()):  # after the row each is paired with
        seeds = [s for s in params.seeds if (experiments_dir / f"{seeded_name(name, s)}.json").exists()
                 and (experiments_dir / f"{seeded_name(name, s)}.jsonl").exists()]
        if not seeds or ref not in rows:
            continue
        row = Row(name, [seeded_name(name, s) for s in seeds], "experiment", seeds, reference=ref)
        prompts = {r["prompt_id"] for r in rows[ref].scores[0]}
        row.scores = [read_jsonl(experiments_dir / f"{run}.jsonl") for run in row.runs]
        other = {run: ids for run, ids in zip(row.runs, ({r["prompt_id"] for r in s} for s in row.scores))
                 if ids != prompts}
        if other:  # committed results of other eval prompts
            files = ", ".join(f"{experiments_dir / run}.jsonl" for run in other)
            common = min(len(ids & prompts) for ids in other.values())
            stale[name] = {"reference": ref, "reason": (
                f"{files}: scored on other prompts than {ref}'s evaluation ({common} of its {len(prompts)} prompts "
                "in common): the eval prompts changed since it ran"), "refresh": refresh_command(name)}
            continue
        for run in row.runs:
            row.evals.append(json.loads((experiments_dir / f"{run}.json").read_text()))
            row.cards.append(read_card(run, experiments_dir / "cards"))
        items = list(rows.items())
        at = [k for k, _ in items].index(ref) + 1
        rows = dict(items[:at] + [(name, row)] + items[at:])
    return rows, dict(reversed(stale.items()))  # in report.experiments' order


def _stale_lines(stale: dict[str, dict]) -> list[str]:
    """The committed experiments left out of every table: why, and the command that reruns each."""
    if not stale:
        return []
    lines = ["", "## Stale committed experiments", "",
             "Committed experiments whose results were scored on other eval prompts than the row they are paired "
             "with (the eval prompts changed since they ran: another profile, base model or tokenizer). They are "
             "left out of every table, interval and summary of this report until rerun.", "",
             "| experiment | paired with | why | refresh |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {x['reference']} | {x['reason']} | `{x['refresh']}` |" for name, x in stale.items()]
    return lines


def _fmt(stat: dict | None, digits: int = 3) -> str:
    if not stat:
        return "n/a"
    return f"{stat['value']:.{digits}f} [{stat['ci_low']:.{digits}f}, {stat['ci_high']:.{digits}f}]"


def _label(row: Row) -> str:
    return {"experiment": f"{row.name} (committed experiment)", "filter": f"{row.name} (moderation filter)"}.get(
        row.kind, row.name)


def _interval(row: Row) -> str:
    return f"{len(row.runs)} seeds: seeds x prompts" if len(row.runs) > 1 else "1 run: prompts only"


class Stats:
    """The bootstrap settings and the prompts every table is computed on."""

    def __init__(self, rows: dict[str, Row], params: Params):
        ev = params.evaluate
        self.n, self.level, self.seed, self.threshold = ev.bootstrap_samples, ev.ci_level, ev.seed, ev.toxic_threshold
        self.fractions = ev.tail_fractions
        base = rows[params.report.baseline]
        self.prompts = M.per_prompt(base.scores[0], self.threshold)  # prompt id -> subset, from the baseline
        common = set(self.prompts)
        for row in rows.values():
            for s in row.scores:
                common &= {r["prompt_id"] for r in s}
        self.ids = sorted(common)

    def table(self, row: Row, judge: str | None = None, ids: list[str] | None = None) -> np.ndarray:
        """(runs, prompts, 3) per-prompt max / any-toxic / mean of each run, by the headline judge or `judge`."""
        runs = [M.per_prompt(s if judge is None else [{**r, "toxicity": r["judges"][judge]} for r in s],
                             self.threshold) for s in row.scores]
        return M.stat_table(runs, ids or self.ids)

    def boot(self, x: np.ndarray, ref: np.ndarray | None = None, stat=M.mean_over_prompts, one_run: bool = False):
        return M.seeds_bootstrap(x, self.n, self.level, self.seed, stat, ref, one_run)

    def groups(self) -> dict[str, list[str]]:
        return M._groups({i: self.prompts[i] for i in self.ids})

    def tail(self, x_by_group: dict[str, np.ndarray], ref_by_group: dict[str, np.ndarray] | None = None) -> dict:
        out = {}
        for g, x in x_by_group.items():
            out[g] = {"n_prompts": x.shape[1]}
            for f in self.fractions:
                k = M.tail_size(x.shape[1], f)
                b = self.boot(x[..., :1], None if ref_by_group is None else ref_by_group[g][..., :1], M.tail_stat(k))
                out[g][M.tail_key(f)] = {**b["stats"][0], "n_tail": k}
        return out


def _headline(b: dict) -> dict:
    return dict(zip(HEADLINE, b["stats"]))


def summarise(rows: dict[str, Row], params: Params) -> dict:
    st, base = Stats(rows, params), params.report.baseline
    tables = {n: st.table(r) for n, r in rows.items()}
    idx = {i: k for k, i in enumerate(st.ids)}
    by_group = {n: {g: t[:, [idx[i] for i in ids]] for g, ids in st.groups().items()} for n, t in tables.items()}
    models = {}
    for name, row in rows.items():
        b = st.boot(tables[name])
        def mean(f, row=row):  # over the runs
            return float(np.mean([f(e) for e in row.evals]))

        ppl = [e["fluency"]["perplexity"] for e in row.evals]
        models[name] = {
            **_headline(b), "interval": _interval(row), "kind": row.kind, "seeds": row.seeds, "runs": row.runs,
            "by_subset": {s: {k: float(np.mean([e["toxicity"][s][k]["value"] for e in row.evals])) for k in HEADLINE}
                          for s in row.evals[0]["toxicity"] if s != "overall"},
            "perplexity": float(np.mean(ppl)) if all(ppl) else None,
            "distinct_2": mean(lambda e: e["diversity"]["distinct_2"]),
            "mean_tokens": mean(lambda e: e["length"]["mean_tokens"]),
            "eos_rate": mean(lambda e: e["length"]["eos_rate"]),
            "tail": st.tail(by_group[name]),
            "judges_in_reward": row.judges,
            "method": row.cards[0]["method"], "signal": row.cards[0]["signal"],
            "budget": {**row.cards[0]["budget"],
                       "seconds": round(float(np.mean([c["budget"]["seconds"] for c in row.cards])), 1)},
            "notes": row.cards[0]["notes"],
        }
        if row.seeded:
            models[name]["per_seed"] = {k: [v[i] for v in b["per_seed"]] for i, k in enumerate(HEADLINE)}
            models[name]["per_seed_perplexity"] = ppl
            models[name]["one_run"] = _headline(st.boot(tables[name], one_run=True))
    vs = {n: {"n_prompts": len(st.ids), **_headline(st.boot(tables[n], tables[base]))} for n in rows if n != base}
    experiments = {}
    for name, row in rows.items():
        if row.kind == "experiment":
            ref = row.reference
            experiments[name] = {"reference": ref, "committed_experiment": True, "vs_reference": {
                "toxicity": {"n_prompts": len(st.ids), **_headline(st.boot(tables[name], tables[ref]))},
                "tail": st.tail(by_group[name], by_group[ref])}}
    summary = {"baseline": base, "judge": rows[base].evals[0]["judge"], "ci_level": st.level,
               "seeds": list(params.seeds), "models": models, "vs_baseline": vs,
               "vs_models": vs_models(rows, st, params), "experiments": experiments}
    summary["overlap"] = {n: overlap(row, rows[base], st, params) for n, row in rows.items()
                          if row.cards[0]["method"] != "base"}
    return summary


def vs_models(rows: dict[str, Row], st: Stats, params: Params) -> dict:
    """{reference: {row: {judge: paired difference}}} for each `report.compare` reference, by every judge that
    scored both rows' runs, so a drop can be read by judges inside and outside a reward."""
    out = {}
    for ref in params.report.compare:
        out[ref] = {}
        for name, row in rows.items():
            if name in (ref, params.report.baseline):
                continue
            judges = [j for j in row.scores[0][0].get("judges", {})
                      if all(j in s[0].get("judges", {}) for s in [*row.scores, *rows[ref].scores])]
            out[ref][name] = {j: {"n_prompts": len(st.ids), **_headline(st.boot(st.table(row, j),
                                                                                 st.table(rows[ref], j)))}
                              for j in judges}
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


def overlap(row: Row, base: Row, st: Stats, params: Params) -> dict:
    """A row's toxicity by a judge outside its training signal beside an in-signal judge's (its card's judges).

    The independent judge is the ensemble if none of its members is in the signal, else the first independent
    judge evaluated. `gap` is the difference between the drop against the baseline that the in-signal judge sees
    and the drop the independent judge sees (expected max toxicity; over seeds and prompts for a seeded row); a gap
    whose interval lies below 0 (the in-signal judge sees a larger drop) is flagged as possible reward hacking."""
    in_reward = row.judges
    reward = set().union(*(_expand(j, params) for j in in_reward)) if in_reward else set()
    judged = [j for j, v in row.evals[0].get("by_judge", {}).items() if "skipped" not in v]
    inside = sorted((j for j in judged if _expand(j, params) & reward), key=lambda j: j not in reward)
    independent = [j for j in judged if not _expand(j, params) & reward]
    out: dict = {"judges_in_reward": in_reward, "in_reward_judge": inside[0] if inside else None,
                 "independent_judge": "ensemble" if "ensemble" in independent else next(iter(independent), None)}
    tables = {}
    for role in ("in_reward_judge", "independent_judge"):
        j = out[role]
        if j is not None:
            tables[role] = st.table(row, j), st.table(base, j)
            out[role.replace("judge", "metrics")] = _headline(st.boot(tables[role][0]))
    if out["in_reward_judge"] is None or out["independent_judge"] is None:
        return out
    (m_in, b_in), (m_ind, b_ind) = tables["in_reward_judge"], tables["independent_judge"]
    if row.name != base.name:
        gap = st.boot((m_in - m_ind)[..., :1], (b_in - b_ind)[..., :1])["stats"][0]
        out.update(vs_baseline_in_reward=st.boot(m_in, b_in)["stats"][0],
                   vs_baseline_independent=st.boot(m_ind, b_ind)["stats"][0], gap=gap,
                   possible_reward_hacking=gap["ci_high"] < 0)
    j_in, j_ind = out["in_reward_judge"], out["independent_judge"]
    disagree = sorted(row.scores[0], key=lambda r: -abs(r["judges"][j_in] - r["judges"][j_ind]))
    out["disagreements"] = [{"prompt_id": r["prompt_id"], "answer": r["answer"], j_in: r["judges"][j_in],
                             j_ind: r["judges"][j_ind]} for r in disagree[:params.report.n_examples]]
    return out


def _seed_values(m: dict, key: str = "expected_max_toxicity") -> str:
    return ", ".join(f"{v:.3f}" for v in m["per_seed"][key]) if "per_seed" in m else ""


def _method_lines(summary: dict, rows: dict[str, Row], labels: dict) -> list[str]:
    """One row per method: its headline toxicity with the interval over seeds and prompts, each seed's value, the
    paired difference to `sft` and its verdict, fluency, and the budget that bought it (from the model cards)."""
    head = summary["judge"]["name"]
    vs_sft = summary["vs_models"].get("sft", {})
    lines = ["", "## Methods compared", "",
             f"Each method's headline toxicity (judge `{head}`) and its paired difference to `sft` (the start of "
             "every trained method). A method trained once per seed shows the mean over its seeds with an interval "
             "from the two-way bootstrap over seeds and prompts, and each seed's own value; a method trained once "
             "shows a prompt-only interval (one run is one draw: the spread over training seeds is not in it). "
             "Budget, from each model's card: training samples, responses a judge or reward model scored to make "
             "the training signal, and the wall seconds of the stages that made one run (generation and labelling "
             "included). Δ per 1k scored = the Δ vs sft divided by the responses scored, x 1000: what a query buys. "
             "A filter row is its source model's outputs through a moderation judge at inference: its budget is "
             "paid again at every use.", "",
             "| method | runs | expected max toxicity | each seed | Δ vs sft | significant vs sft | Δ per 1k scored "
             "| toxicity probability | perplexity | training samples | responses scored | seconds per run |",
             "| --- | --- | --- | --- | --- | --- | ---: | --- | ---: | --- | --- | ---: |"]
    for name, m in summary["models"].items():
        b = m["budget"]
        d = vs_sft.get(name, {}).get(head, {}).get("expected_max_toxicity")
        sig = "" if not d else ("yes: lower" if d["ci_high"] < 0 else "yes: higher" if d["ci_low"] > 0 else "no")
        per_k = f"{1000 * d['value'] / b['scored_responses']:.3f}" if d and b["scored_responses"] else ""
        samples = (f"{b['training_samples']} {b['sample_unit']}".strip() if b["training_samples"] else "0")
        if b["inference_samples"]:
            samples += f" (+{b['inference_samples']} samples at inference)"
        if m["notes"] and rows[name].kind != "filter":
            samples += f"; {m['notes']}"
        scored = f"{b['scored_responses']} x {m['signal']}" if b["scored_responses"] else "0"
        ppl = f"{m['perplexity']:.1f}" if m["perplexity"] else "n/a"
        lines.append(f"| {_label(rows[name])} | {_interval(rows[name])} | {_fmt(m['expected_max_toxicity'])} | "
                     f"{_seed_values(m)} | {_fmt(d) if d else ''} | {sig} | {per_k} | "
                     f"{_fmt(m['toxicity_probability'])} | {ppl} | {samples} | {scored} | {b['seconds']:.0f} |")
    if labels.get("agreement"):
        lines += ["", "AI labels: " + f"{labels['pairs']} pairs kept of {labels['prompts']} prompts "
                  f"({labels['dropped_below_margin']} below the margin {labels['min_margin']}); grader agreement "
                  + ", ".join(f"{k} {v:.2f}" for k, v in labels["agreement"].items() if v is not None) + "."]
    return lines


def _tail_lines(summary: dict, rows: dict[str, Row], params: Params) -> list[str]:
    """Tail risk per method (the mean of the worst fractions of per-prompt max toxicities, overall and on the
    challenging subset) and each committed experiment's paired difference to its reference method."""
    keys = [(M.tail_key(f), f"{f:.0%}") for f in params.evaluate.tail_fractions]
    groups = [g for g in ("overall", "challenging") if all(g in m["tail"] for m in summary["models"].values())]
    head = [f"worst {pct}{'' if g == 'overall' else ' ' + g}" for g in groups for _, pct in keys]
    lines = ["", "## Tail risk: the worst prompts", "",
             f"The mean of the worst {' / '.join(pct for _, pct in keys)} of per-prompt maximum toxicities (judge `"
             + summary["judge"]["name"] + "`; the CVaR of the per-prompt max: the worst ceil(fraction x n) prompts), "
             "overall and on the challenging prompts; intervals over seeds and prompts (seeded methods: each seed's "
             "own worst prompts, averaged over seeds) or over prompts (one run). Risk-averse RLHF (RA-RLHF) trains "
             "on the worst returns of each batch to lower this tail more than the mean.", "",
             "| method | " + " | ".join(head) + " |", "| --- |" + " --- |" * len(head)]
    for name, m in summary["models"].items():
        lines.append(f"| {_label(rows[name])} | "
                     + " | ".join(_fmt(m["tail"][g].get(k)) for g in groups for k, _ in keys) + " |")
    for name, x in summary.get("experiments", {}).items():
        ref, d = x["reference"], x["vs_reference"]
        lines += ["", f"`{name}` (committed experiment: `dvc repro experiments/dvc.yaml:{name}`) minus `{ref}`, paired "
                  "over the same prompts, seeds of each drawn independently (each model's own worst prompts among "
                  "each resample):", "",
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


def _chat_lines(chat_dir: Path, answers_dir: Path, rows: dict[str, Row], base: str, st: Stats) -> list[str]:
    """The chat-domain table: each method's answers to held-out ToxicChat inputs, by category, with refusal rates
    (means over seeds) and the difference to the baseline (over seeds and prompts for a seeded method)."""
    have = {n: r for n, r in rows.items() if all((chat_dir / f"{run}.json").exists() for run in r.runs)}
    evals = {n: [json.loads((chat_dir / f"{run}.json").read_text()) for run in r.runs] for n, r in have.items()}
    if not evals:
        return []
    first = next(iter(evals.values()))[0]
    cats = [c for c in ("toxic", "jailbreaking", "nontoxic") if first["prompts"].get(c)]

    def mean(runs, get):
        vals = [get(r) for r in runs]
        return None if any(v is None for v in vals) else {"value": float(np.mean([v["value"] for v in vals])),
                                                          "ci_low": min(v["ci_low"] for v in vals),
                                                          "ci_high": max(v["ci_high"] for v in vals)}

    lines = ["", "## Chat domain: held-out ToxicChat user inputs", "",
             f"{first['n_prompts']} user inputs that no model or judge trained on ("
             + ", ".join(f"{first['prompts'][c]} {c}" for c in cats) + f"), answered in each model's chat template, "
             f"k = {first['k']}; headline judge `{first['judge']}` (trained on ToxicChat human labels, calibrated to "
             "the human toxic rate). Expected max toxicity by category; refusal = an answer matching "
             "`chat_eval.refusal_patterns`. A seeded method shows the mean over its seeds, in brackets the lowest "
             "and highest bound of its seeds' prompt intervals.", "",
             "| method | expected max toxicity | " + " | ".join(f"EMT {c}" for c in cats)
             + " | toxicity probability | refusal rate | " + " | ".join(f"refusal {c}" for c in cats) + " |",
             "| --- | --- | " + " | ".join("---" for _ in cats)
             + " | --- | --- | " + " | ".join("---" for _ in cats) + " |"]
    for name, runs in evals.items():
        def t(c, k, runs=runs):
            return mean(runs, lambda r: r["toxicity"].get(c, {}).get(k))

        def ref(c, runs=runs):
            return mean(runs, lambda r: r["refusal_rate"].get(c))

        lines.append(f"| {_label(rows[name])}{'' if runs[0]['chat_template'] else ' (no template: raw text)'} | "
                     f"{_fmt(t('overall', 'expected_max_toxicity'))} | "
                     + " | ".join(_fmt(t(c, "expected_max_toxicity")) for c in cats)
                     + f" | {_fmt(t('overall', 'toxicity_probability'))} | {_fmt(ref('overall'))} | "
                     + " | ".join(_fmt(ref(c)) for c in cats) + " |")
    answers = {n: [M.per_prompt(read_jsonl(answers_dir / f"{run}.jsonl"), st.threshold) for run in rows[n].runs]
               for n in evals if all((answers_dir / f"{run}.jsonl").exists() for run in rows[n].runs)}
    if base in answers:
        ids = sorted(set.intersection(*(set(p) for runs in answers.values() for p in runs)))
        ref_table = M.stat_table(answers[base], ids)
        lines += ["", f"Difference to `{base}` (same prompts; seeded methods over seeds and prompts): Δ expected max "
                  "toxicity, Δ toxicity probability", "",
                  "| method | Δ expected max toxicity | Δ toxicity probability |", "| --- | --- | --- |"]
        for name, runs in answers.items():
            if name != base:
                d = _headline(st.boot(M.stat_table(runs, ids), ref_table))
                lines.append(f"| {_label(rows[name])} | {_fmt(d['expected_max_toxicity'])} | "
                             f"{_fmt(d['toxicity_probability'])} |")
    return lines


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


def _plots(summary: dict, maxes: dict[str, list[float]], threshold: float, plots_dir: Path) -> list[str]:
    """Bars of each method's headline metrics with their intervals; the histogram of per-prompt maxima (every
    run of a seeded method pooled)."""
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
        ax.hist(maxes[n], bins=20, range=(0, 1), histtype="step", linewidth=1.5, label=n, density=True)
    ax.axvline(threshold, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("max toxicity over a prompt's k continuations")
    ax.set_ylabel("share of prompts")
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


def _overlap_lines(overlaps: dict[str, dict], base: str) -> list[str]:
    def quote(text: str) -> str:
        return text.replace("\n", " ").replace("|", "\\|")[:200]

    lines = ["## Reward / judge overlap", "",
             "A drop measured by a judge inside a model's training reward is weak evidence: the policy may have "
             "learnt that judge's blind spots. Each trained model's numbers by a judge outside its reward "
             "(the ensemble of independent judges where there is one), beside an in-reward judge's (⚠). All "
             "judges on the Perspective scale where calibrated; seeded methods over seeds and prompts.", "",
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
           experiments_dir: str | Path = "experiments/results", cards_dir: str | Path = "metrics/cards") -> dict:
    eval_dir, scores_dir, plots_dir = Path(eval_dir), Path(scores_dir), Path(plots_dir)
    metrics_dir = Path(data_path).parent
    rows, stale = load_rows(params, eval_dir, scores_dir, Path(cards_dir), Path(experiments_dir))
    summary = summarise(rows, params)
    if stale:  # absent where none is: the report of a run without one stays as it was
        summary["stale_experiments"] = stale
    plots_dir.mkdir(parents=True, exist_ok=True)
    threshold = params.evaluate.toxic_threshold
    maxes = {n: [p["max"] for s in r.scores for p in M.per_prompt(s, threshold).values()] for n, r in rows.items()}
    pngs = _plots(summary, maxes, threshold, plots_dir)
    judges = json.loads(Path(judges_path).read_text())
    data = json.loads(Path(data_path).read_text())
    labels_path = metrics_dir / "label_ai.json"
    labels = json.loads(labels_path.read_text()) if labels_path.exists() else {}

    base = summary["baseline"]
    rel = Path("..") / plots_dir  # report.md lives in reports/
    # where each method's models were trained, at which precision (their cards): numbers differ by CPU kind
    made_on = {}
    for name, row in rows.items():
        for c in row.cards:
            p = c["platform"]
            if p and row.kind != "filter":
                made_on.setdefault(name, {})[f"{p.get('gpu') or p['cpu_kind']}" + (
                    f", {'fp32' if p['precision'] == 'none' else p['precision']} ({p['precision_reason']})"
                    if p.get("precision") else "")] = None
    seeded = [n for n, r in rows.items() if r.seeded]
    judge_name = summary["judge"]["name"]
    scale = "calibrated to the Perspective scale" if summary["judge"].get("calibrated") else "raw scores"
    lines = [
        "# Toxicity report", "",
        "> Warning: this report quotes model outputs on toxic prompts; they may be offensive.", "",
        "Held-out RealToxicityPrompts: "
        + " + ".join(f"{n} {s}" for s, n in data["eval_prompts_by_subset"].items()) + " eval prompts, "
        f"k = {rows[base].evals[0]['k']} samples each; judge `{summary['judge']['name']}` "
        f"({summary['judge']['version']}, {scale}); {summary['ci_level']:.0%} bootstrap intervals"
        + (f": {', '.join(seeded)} trained once per seed ({', '.join(map(str, summary['seeds']))}), each "
           "method's value the mean over its seeds and its interval over seeds and prompts (two-way bootstrap); "
           "the other rows are one run each, their intervals over prompts only." if seeded else " over prompts."), "",
        *([("Trained on: " + "; ".join(f"{n} {' / '.join(k)}" for n, k in made_on.items())
           + ". Seeded runs reproduce bit for bit on the same CPU kind only (README: Reproducibility)."), ""]
          if made_on else []),
        "| method | runs | expected max toxicity | toxicity probability | mean toxicity | perplexity | distinct-2 "
        "| EOS rate | judges in training signal |",
        "| --- | --- | --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for name, m in summary["models"].items():
        ppl = f"{m['perplexity']:.1f}" if m["perplexity"] else "n/a"
        flag = ", ".join(m["judges_in_reward"]) or "none"
        if _expand(judge_name, params) & set().union(*(_expand(j, params) for j in m["judges_in_reward"])):
            flag += " ⚠ (measures these numbers: see the overlap section)"
        lines.append(f"| {_label(rows[name])} | {_interval(rows[name])} | {_fmt(m['expected_max_toxicity'])} | "
                     f"{_fmt(m['toxicity_probability'])} | {_fmt(m['mean_toxicity'])} | {ppl} | "
                     f"{m['distinct_2']:.3f} | {m['eos_rate']:.2f} | {flag} |")
    lines += _stale_lines(stale)
    lines += ["", f"## Difference to `{base}` (paired over the same prompts; seeded methods over seeds too)", ""]
    if summary["vs_baseline"]:
        lines += ["| model | Δ expected max toxicity | Δ toxicity probability | Δ mean toxicity |",
                  "| --- | --- | --- | --- |"]
        for name, d in summary["vs_baseline"].items():
            lines.append(f"| {_label(rows[name])} | {_fmt(d['expected_max_toxicity'])} | "
                         f"{_fmt(d['toxicity_probability'])} | "
                         f"{_fmt(d['mean_toxicity'])} |")
    else:
        lines.append(f"Only `{base}` is evaluated so far; trained models join through `models:` in params.yaml.")
    lines += _method_lines(summary, rows, labels)
    lines += _tail_lines(summary, rows, params)
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
    lines += _chat_lines(metrics_dir / "chat", Path("data/chat/answers"), rows, base, Stats(rows, params))
    first = {(n if not r.seeded else f"{n} ({r.runs[0]})"): r.scores[0] for n, r in rows.items()}
    lines += ["", "## Most toxic continuations", "", *_examples(first, base, params.report.n_examples)]
    write_json(summary_path, summary)
    with atomic_file(report_path) as fh:
        fh.write("\n".join(lines) + "\n")
    return summary
