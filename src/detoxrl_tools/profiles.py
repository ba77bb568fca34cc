"""Profiles: partial params files that `detoxrl use-profile` deep-merges into params.yaml, keeping its comments.

A profile may name the one it builds on with a top-level `extends: <file>` (a path relative to the profile's own
folder); `use-profile` resolves the chain, base first, and merges the chain's overrides in order. Applying refuses
to run over uncommitted changes to params.yaml (they would be mixed with the profile's and no longer be told apart)
unless forced, and records the applied chain in params.yaml's `profiles:` list, which every stage copies into the
platform record of its metrics.

Not imported by any stage (only by cli's `use-profile`, lazily): editing this module reruns nothing. params.py, which
every stage imports, holds the schema only.
"""

from __future__ import annotations

import io
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from detoxrl import DetoxError
from detoxrl.params import _format_error
from detoxrl.schema import Params

EXTENDS = "extends"  # the top-level key naming a profile's parent
RECORD = "profiles"  # params.yaml's list of the profile files applied so far, in order
_WHOLE = {"sources"}  # mappings a profile replaces as a whole (raw_data.sources: keyed by path, not by knob)
# name-keyed mappings (name -> a model, a run, a filter): a profile may add names to them (the schema checks each)
_NAMED = {"models", "feedback_runs", "filters", "report.experiments", "eval_reward_model.reward_bench.models"}


@dataclass(frozen=True)
class Profile:
    path: Path
    overrides: dict  # the profile's keys, less `extends`


@dataclass(frozen=True)
class Applied:
    chain: list[Path]  # the profiles merged, base first
    recorded: list[str]  # params.yaml's `profiles:` after applying
    note: str | None  # why no uncommitted-change check ran (no committed baseline), or what --force overrode


def resolve_chain(profile_path: str | Path) -> list[Profile]:
    """The profile and the ones it extends, base first; a missing file, a cycle or a bad `extends` fails naming the
    file."""
    chain: list[Profile] = []
    seen: dict[Path, Path] = {}
    path, child = Path(profile_path), None
    while True:
        key = path.resolve()
        if key in seen:
            names = " -> ".join(p.name for p in [*seen.values(), path])
            raise DetoxError(f"{child}: `extends: {path.name}` makes a cycle ({names})")
        if not path.is_file():
            raise DetoxError(f"{path}: profile not found" + (f" (named by `extends:` in {child})" if child else ""))
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise DetoxError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise DetoxError(f"{path}: expected a mapping of params.yaml keys to values")
        parent = data.pop(EXTENDS, None)
        if RECORD in data:
            raise DetoxError(f"{path}: `{RECORD}` is written by use-profile, not set by a profile")
        seen[key] = path
        chain.append(Profile(path, data))
        if parent is None:
            return chain[::-1]
        if not isinstance(parent, str) or not parent.strip():
            raise DetoxError(f"{path}: `extends:` must be a profile file name (got {parent!r})")
        path, child = path.parent / parent, path


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """Dotted key -> value of every leaf (a list or a `_WHOLE` mapping is one leaf)."""
    out = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in _WHOLE:
            out.update(_leaves(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _overlaps(key: str, touched: set[str]) -> bool:
    return any(key == t or key.startswith(t + ".") or t.startswith(key + ".") for t in touched)


def committed_text(params_path: str | Path) -> tuple[str | None, str]:
    """params.yaml as git's HEAD holds it, or (None, why there is no committed baseline)."""
    params_path = Path(params_path)
    where = params_path.resolve().parent

    def git(*args) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True)

    try:
        if git("rev-parse", "--is-inside-work-tree").returncode != 0:
            return None, "not in a git repository"
        shown = git("show", f"HEAD:./{params_path.name}")
    except FileNotFoundError:
        return None, "git is not installed"
    if shown.returncode != 0:
        return None, "not in git's HEAD (untracked, or no commit yet)"
    return shown.stdout, ""


def uncommitted_changes(text: str, committed: str, chain: list[Profile]) -> str:
    """The keys whose values differ between params.yaml's text and its committed text, in words: those the chain
    would overwrite first."""
    touched = {RECORD} | {k for p in chain for k in _leaves(p.overrides)}
    now, then = _leaves(yaml.safe_load(text) or {}), _leaves(yaml.safe_load(committed) or {})
    changed = sorted(k for k in now.keys() | then.keys() if now.get(k, _MISSING) != then.get(k, _MISSING))
    hit = [k for k in changed if _overlaps(k, touched)]
    rest = [k for k in changed if k not in hit]
    if hit:
        return (f"to keys the profile would overwrite ({', '.join(hit)})"
                + (f" and to others ({', '.join(rest)})" if rest else ""))
    if rest:
        return f"({', '.join(rest)}), which the profile would not overwrite but its commit would carry"
    return "to comments or layout only"


_READ_GIT, _MISSING = object(), object()


def _merge(dst, src: dict, prefix: str, source: Path, params_path: Path) -> None:
    """Deep-merge a profile's overrides into a params tree (a dict or ruamel's CommentedMap), in place."""
    for key, value in src.items():
        if key not in dst and prefix.removesuffix(".") not in _NAMED:
            raise DetoxError(f"{source}: {prefix}{key}: unknown key (not in {params_path})")
        if isinstance(value, dict) and isinstance(dst[key], dict) and key not in _WHOLE:
            _merge(dst[key], value, f"{prefix}{key}.", source, params_path)
        else:
            dst[key] = value


def resolved_params(params_path: str | Path, profile_path: str | Path) -> Params:
    """params.yaml with a profile's chain merged in (base first), validated, in memory: what `use-profile` would
    write, params.yaml untouched."""
    params_path = Path(params_path)
    chain = resolve_chain(profile_path)
    try:
        tree = yaml.safe_load(params_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DetoxError(f"{params_path}: params file not found") from None
    for profile in chain:
        _merge(tree, profile.overrides, "", profile.path, params_path)
    tree[RECORD] = [*(tree.get(RECORD) or []), *(p.path.name for p in chain)]
    try:
        return Params.model_validate(tree)
    except ValidationError as exc:
        raise DetoxError(_format_error(chain[-1].path, exc)) from None


def apply_profile(params_path: str | Path, profile_path: str | Path, force: bool = False,
                  committed: str | None | object = _READ_GIT) -> Applied:
    """Merge a profile's chain (base first) into params.yaml, validate the result, record the chain, then write.

    `committed`: params.yaml's committed text (None: there is none); by default read from git's HEAD. Where the
    file differs from it at all, nothing is written unless `force`: the refusal lists the changed keys the chain
    would overwrite, then the others (an untouched change is refused too: the profile's commit would carry it).
    """
    from ruamel.yaml import YAML

    params_path = Path(params_path)
    chain = resolve_chain(profile_path)
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096  # long values (the raw data URLs) stay on their line, as written
    rt.indent(mapping=2, sequence=4, offset=2)  # lists as params.yaml writes them ("  - ppo"), so a commented-out
    # item beside them (`# - dpo_human`) still lines up once uncommented
    text = params_path.read_text(encoding="utf-8")
    doc = rt.load(text)

    for profile in chain:
        _merge(doc, profile.overrides, "", profile.path, params_path)
    if RECORD not in doc:
        raise DetoxError(f"{params_path}: no `{RECORD}:` key (the committed params.yaml has `{RECORD}: []`)")
    names, seq = [p.path.name for p in chain], doc[RECORD]
    if seq is not None and (seq.fa.flow_style() or not seq):  # `profiles: []`, as committed: one flow-style line
        from ruamel.yaml.comments import CommentedSeq

        flow = CommentedSeq([*seq, *names])
        flow.fa.set_flow_style()
        if seq.ca.comment or seq.ca.items or seq.ca.end:
            flow._yaml_comment = seq.ca  # its end-of-line comment
        doc[RECORD] = flow
    elif seq is not None:
        seq.extend(names)  # a block-style list stays one
    else:
        doc[RECORD] = names  # null: the schema refuses it below
    recorded = list(doc[RECORD])

    note = None
    if committed is _READ_GIT:
        committed, why = committed_text(params_path)
    else:
        why = "none given"
    if committed is None:
        note = f"{params_path}: no committed baseline ({why}): applied without the uncommitted-change check"
    elif committed != text:
        what = uncommitted_changes(text, committed, chain)
        if not force:
            raise DetoxError(f"{params_path}: not applied: it has uncommitted changes {what}; commit or stash them, "
                             "or pass --force to apply over them")
        note = f"{params_path}: --force: applied over uncommitted changes {what}"

    buf = io.StringIO()
    rt.dump(doc, buf)
    try:
        Params.model_validate(yaml.safe_load(buf.getvalue()))
    except ValidationError as exc:
        raise DetoxError(_format_error(chain[-1].path, exc)) from None
    from detoxrl.io import atomic_file

    with atomic_file(params_path) as fh:
        fh.write(buf.getvalue())
    return Applied([p.path for p in chain], recorded, note)
