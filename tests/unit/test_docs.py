"""The docs: every generated page and block is what the generator writes now from the committed files, every
params.yaml key has a description in the schema, and the built site renders in headless Chromium with every
internal link resolving. Only the browser test launches a process (slow); the rest call the generator in-process.

The generated files are checked as git holds them against the inputs as git holds them (`committed_repo`): the
metrics and reports that a `dvc repro` rewrites in the working tree (other numbers on another CPU kind) fail no test;
committed (or staged) without the pages regenerated from them, they do."""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml
from conftest import ROOT, committed_files

from detoxrl import DetoxError, cli
from detoxrl_tools import docs_gen

# What the generator reads and writes, copied from git's index into a scratch repo (`committed_repo`).
DOCS_INPUTS = ["README.md", "docs", "metrics", "reports", "dvc.yaml", "experiments", "params.yaml", "benchmarks",
               "profiles", "configs"]  # profiles, configs: the memory plan (docs/scaling.md)


@pytest.fixture
def committed_repo(tmp_path) -> Path:
    """The generator's inputs and outputs as committed (git's index: the last commit plus what is staged), in a
    scratch repo: never what the user's last pipeline run left in the working tree."""
    return committed_files(DOCS_INPUTS, tmp_path / "repo")


def test_committed_generated_docs_are_current(committed_repo):
    """The committed pages and the README's generated block equal what `detoxrl docs` writes from the committed
    metrics, dvc.yaml, params.yaml and schema (after a pipeline run or a params change: `detoxrl docs`, then commit
    the pages with what they quote). Uncommitted metrics of a rerun change nothing here."""
    assert docs_gen.stale(committed_repo) == [], \
        "stale generated docs in git: run `detoxrl docs` and commit (or stage) them with the files they quote"


def test_the_committed_copy_is_what_git_holds_not_what_a_rerun_left(tmp_path):
    """`committed_files` (what `committed_repo` is built from): a rerun's rewrite of a metrics file, uncommitted, is
    not in the copy; the same file staged or committed is, so a commit whose pages disagree with its own metrics
    still fails the check above. A path git does not hold fails, never an empty copy that checks nothing."""
    from dulwich.repo import Repo

    repo = tmp_path / "git"
    metric = repo / "metrics" / "summary.json"
    metric.parent.mkdir(parents=True)
    metric.write_text('{"emt": 0.407}\n')
    with Repo.init(str(repo)) as git:  # in-process, no hooks run: the fast tier starts no process
        git.hooks.clear()
        git.get_worktree().stage(["metrics/summary.json"])
        git.get_worktree().commit(message=b"run", author=b"t <t@t>", committer=b"t <t@t>", no_verify=True)

    def copied(dest: str) -> str:
        return (committed_files(["metrics"], tmp_path / dest, repo) / "metrics" / "summary.json").read_text()

    metric.write_text('{"emt": 0.408}\n')  # `dvc repro` on another CPU kind
    assert copied("unstaged") == '{"emt": 0.407}\n'
    with Repo(str(repo)) as git:
        git.get_worktree().stage(["metrics/summary.json"])
    assert copied("staged") == '{"emt": 0.408}\n'
    with pytest.raises(AssertionError, match="not in git's index: reports"):
        committed_files(["metrics", "reports"], tmp_path / "missing", repo)


def test_readme_carries_the_generated_result_table_and_stays_short():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = docs_gen.BLOCK.search(text)
    assert block and block.group("name") == "results" and "| ppo |" in block.group("body")
    assert len(text.encode()) <= 12 * 1024


def test_check_fails_naming_the_stale_file(committed_repo, monkeypatch, capsys):
    monkeypatch.chdir(committed_repo)
    monkeypatch.setattr(sys, "argv", ["detoxrl", "docs", "--check"])
    with pytest.raises(SystemExit) as exit_:  # `main` is what the console script runs
        cli.main()
    assert exit_.value.code in (0, None)

    readme = committed_repo / "README.md"
    row = "| ppo | 3 seeds: seeds x prompts | "
    readme.write_text(readme.read_text().replace(row + "0.", row + "9."), encoding="utf-8")
    (committed_repo / "docs" / "reference" / "params.md").write_text("edited by hand\n")
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "README.md" in err and "docs/reference/params.md" in err and "docs/results.md" not in err

    assert sorted(docs_gen.write(committed_repo)) == ["README.md", "docs/reference/params.md"]
    assert docs_gen.stale(committed_repo) == []


def test_a_changed_metric_changes_the_pages_that_quote_it(committed_repo):
    import json

    path = committed_repo / "metrics" / "summary.json"
    summary = json.loads(path.read_text())
    summary["models"]["ppo"]["expected_max_toxicity"]["value"] = 0.123456
    path.write_text(json.dumps(summary))
    stale = docs_gen.stale(committed_repo)
    assert "README.md" in stale and "docs/results.md" in stale and "docs/index.md" in stale
    assert "| ppo | 3 seeds: seeds x prompts | 0.123 [" in docs_gen.render(committed_repo)["README.md"]


def test_a_stale_committed_experiment_is_named_with_its_refresh_on_the_results_page_and_in_the_readme(committed_repo):
    """summary.json's `stale_experiments` (the report left the experiment out: scored on other eval prompts) shows
    on the pages that quote the results, with the command that reruns it; the committed run has none."""
    import json

    path = committed_repo / "metrics" / "summary.json"
    summary = json.loads(path.read_text())
    assert "stale_experiments" not in summary
    refresh = "dvc repro experiments/dvc.yaml:dpo_seeds && dvc repro --force --single-item report"
    summary["stale_experiments"] = {"dpo_seeds": {
        "reference": "dpo", "refresh": refresh,
        "reason": "experiments/results/dpo_seeds/s0.jsonl: scored on other prompts than dpo's evaluation"}}
    path.write_text(json.dumps(summary))
    pages = docs_gen.render(committed_repo)
    assert f"Left out, stale (scored on other eval prompts; `stale_experiments` in metrics/summary.json): " \
           f"dpo_seeds, rerun with `{refresh}`." in pages["README.md"]
    results = pages["docs/results.md"]
    assert "## Stale committed experiments" in results
    assert (f"| dpo_seeds | dpo | experiments/results/dpo_seeds/s0.jsonl: scored on other prompts than dpo's "
            f"evaluation | `{refresh}` |") in results


def test_every_params_yaml_key_has_a_description_in_the_schema():
    values = yaml.safe_load((ROOT / "params.yaml").read_text())
    keys = docs_gen.params_yaml_keys(values)
    assert len(keys) > 250 and "ppo.kl.coef" in keys and "filters.sft_filtered.source" in keys
    missing = [k for k in keys if not docs_gen.param_description(k)]
    assert missing == [], f"params.yaml keys without a description in src/detoxrl/params.py: {missing}"
    # and every field of the schema, including those no params.yaml value reaches (mapping entries' fields)
    assert [k for k, _, d in docs_gen.schema_rows() if not d] == []


def test_params_reference_lists_every_key_with_type_value_and_range():
    page = docs_gen.params_page(ROOT)
    values = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, _, _ in docs_gen.schema_rows():  # a section (top-level key) is a heading, or a row when it is a value
        assert f"| `{key}` |" in page or ("." not in key and f"## `{key}`" in page), key
    assert "| `ppo.kl.coef` | float | `0.05` | ≥ 0 |" in page
    assert "| `generate.top_p` | float | `0.9` | > 0, ≤ 1 |" in page
    assert f"`{values['evaluate']['judge']}`" in page and "`perspective_distilled`, `chat_distilled`" in page


def test_every_stage_needs_a_note_and_the_pipeline_page_lists_each(committed_repo):
    page = docs_gen.pipeline_page(ROOT)
    for name in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]:
        assert f"### `{name}" in page, name
    notes = committed_repo / "docs" / "stages.yaml"
    notes.write_text(notes.read_text().replace("\nsft: >-", "\nnot_sft: >-"))
    with pytest.raises(DetoxError, match=r"no description of stage\(s\) sft"):
        docs_gen.pipeline_page(committed_repo)


def test_benchmark_results_are_rendered_with_machine_and_command(committed_repo, monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    monkeypatch.setattr(sys, "argv", ["bench_ppo_memory.py", "--steps", "1"])
    try:
        import common
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    out = committed_repo / "benchmarks" / "results" / "bench_ppo_memory.json"
    common.write_results("bench_ppo_memory", {"peak_rss_gib": 1.5}, str(out))
    block = docs_gen.benchmarks_block(committed_repo)
    assert "`python benchmarks/bench_ppo_memory.py --steps 1`" in block and "| `peak_rss_gib` | 1.5 |" in block
    assert "No committed result yet:" in block and "`benchmarks/bench_ppo_memory.py`" not in block.split("yet:")[1]


def _internal_links_resolve(page, site: Path) -> tuple[int, list[str]]:
    """(internal links checked, each that does not land on an existing page or an existing anchor there)."""
    bad, checked = [], 0
    for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)"):
        url = urlparse(href)
        if url.scheme != "file":
            continue
        checked += 1
        target = Path(unquote(url.path))
        if target.is_dir():
            target = target / "index.html"
        inside = target.exists() and site.resolve() in target.resolve().parents
        anchor_ok = not url.fragment or f'id="{unquote(url.fragment)}"' in target.read_text(encoding="utf-8")
        if not inside or not anchor_ok:
            bad.append(href)
    return checked, bad


@pytest.mark.slow
def test_built_site_renders_and_its_internal_links_resolve(tmp_path):
    from browser import browser
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    site = tmp_path / "site"
    build(load_config(str(ROOT / "mkdocs.yml"), site_dir=str(site), strict=True))
    pages = {"index.html": ("detoxrl", "detoxrl"), "reference/params.html": ("Params reference", "Params reference"),
             "results.html": ("Results - detoxrl", "Results on the default profile")}  # (title, h1)
    with browser() as b:
        page = b.new_page()
        for rel, (title, heading) in pages.items():
            page.goto((site / rel).as_uri())
            assert title in page.title(), (rel, page.title())
            article = page.locator("article")
            assert heading in article.locator("h1").first.inner_text()
            assert len(article.inner_text()) > 1000, rel
            assert page.locator("article table").count() >= 1, rel
            checked, bad = _internal_links_resolve(page, site)
            assert checked >= 10 and bad == [], (rel, checked, bad)


def _code(text: str) -> list[str]:
    """params.yaml's lines without their end-of-line comments (comment-only lines dropped)."""
    out = []
    for line in text.split("\n"):
        m = docs_gen._KEY_LINE.match(line)
        if m:
            line = line[:m.end()] + docs_gen._split_comment(line[m.end():])[0]
        if line.strip() and not line.strip().startswith("#"):
            out.append(line.rstrip())
    return out


def test_params_yaml_comments_come_from_the_schema(committed_repo):
    """Each schema field's end-of-line comment in params.yaml is its description in params.py: a comment edited by
    hand is named stale by the check, and `detoxrl docs` puts the schema's text back."""
    path = committed_repo / "params.yaml"
    committed = path.read_text(encoding="utf-8")
    coef = docs_gen.param_description("ppo.kl.coef")
    assert f"    coef: 0.05              # {coef}\n" in committed
    # a field without a hand comment got one too (lam); user-data entries (models:) and full-line comments are as
    # written by hand
    assert "  lam: 0.95                 # GAE lambda\n" in committed and "  base: models/base\n" in committed
    assert "  - dpo_rlaif               # DPO on on-policy pairs" in committed
    assert "\n  # human: {init: models/sft, train: data/feedback/human_pairs.jsonl" in committed
    assert "\n  # - dpo_human             # with human labels" in committed

    path.write_text(committed.replace(f"# {coef}", "# my own words", 1)
                    .replace("  lam: 0.95                 # GAE lambda", "  lam: 0.95", 1), encoding="utf-8")
    assert docs_gen.stale(committed_repo) == ["params.yaml"]
    assert docs_gen.write(committed_repo) == ["params.yaml"]
    assert path.read_text(encoding="utf-8") == committed and docs_gen.stale(committed_repo) == []

    # a description too long for the line is cut at a clause boundary, nothing added
    line = next(x for x in committed.split("\n") if x.startswith("  checkpoint_every:"))
    full = docs_gen.param_description("ppo.checkpoint_every")
    comment = line.split("# ", 1)[1]
    assert len(line) <= docs_gen.LINE_WIDTH and full.startswith(comment) and full[len(comment)] in ";."


def test_regenerating_params_yaml_comments_changes_no_value(committed_repo):
    """The rewrite touches comments only: the same YAML data, the same lines apart from end-of-line comments (a `#`
    inside a quoted value is no comment), full-line comments kept; and a profile-applied params.yaml (ruamel's
    output) still goes through it."""
    from detoxrl_tools.profiles import apply_profile

    committed = (committed_repo / "params.yaml").read_text(encoding="utf-8")
    bare = "\n".join(line.split("  #")[0].rstrip() if not line.lstrip().startswith("#") and '"' not in line
                     else line for line in committed.split("\n")
                     if not line.startswith(" " * docs_gen.COMMENT_COLUMN + "#"))  # end-of-line comments removed
    bare = bare.replace('chat_instruction: "Continue the following text."', 'chat_instruction: "Go on # here"')
    out = docs_gen.params_yaml_comments(bare)
    assert yaml.safe_load(out) == yaml.safe_load(bare) and _code(out) == _code(bare)
    assert yaml.safe_load(out)["generate"]["chat_instruction"] == "Go on # here"
    full_line = [x for x in bare.split("\n") if x.lstrip().startswith("#")]
    assert [x for x in out.split("\n") if x in full_line] == full_line
    assert docs_gen.params_yaml_comments(committed) == committed  # the committed file is what it generates

    path = committed_repo / "params.yaml"
    apply_profile(path, ROOT / "profiles" / "smoke.yaml", committed=None)  # no git baseline to compare with
    profiled = path.read_text(encoding="utf-8")
    assert yaml.safe_load(docs_gen.params_yaml_comments(profiled)) == yaml.safe_load(profiled)

    with pytest.raises(DetoxError, match=r"params.yaml:2: not a `key: value` line"):
        docs_gen.params_yaml_comments("prepare:\n? complex key\n")
