"""rubric.py - how the teacher's text becomes a reward (arXiv 2605.07396, §2.2, Eqs. 2-4, Table 6).

    ropd_reward         the ROPD reward for a batch of groups, given any `complete` function (to copy):
      induce_rubrics    Eq. 2: one rubricator call per group -> one shared rubric
      verify_blindly    Eq. 3: references + rollouts shuffled into one blind pool, graded per criterion
      weighted_pass_rates Eq. 4: s_i = sum_k w_k v_ik / sum_k w_k, recomputed from the booleans
    tjudge_reward, ovd_reward   the holistic-judge baselines of §3.1
    parse_rubric, parse_verdicts, parse_single_verdict, parse_score   tolerant JSON -> strict checks

The prompts themselves are in prompts.py. Pure Python (stdlib only), no tensors: the caller passes
a function that sends chats to a judge. Every invalid judge output raises JudgeFormatError with a
message that says what was wrong; ask_judge re-asks, and a group that stays unscored falls back.
"""
from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import prompts
from prompts import (MAX_CRITERIA, MIN_CRITERIA, OVD_SCHEMA, PAPER_VERDICT_SCHEMA, RUBRIC_SCHEMA,
                     RUBRIC_SCHEMAS, TJUDGE_SCHEMA, VERDICT_SCHEMA)


class JudgeFormatError(ValueError):
    """The judge's output could not be turned into a valid rubric or verdict list. `kind` is what
    went wrong, as the official code tells failures apart for its per-stage re-ask counts: "empty",
    "parse" (no JSON value), "schema" (not the asked-for shape) or "validation" (the shape, but
    counts, ranges or ids wrong)."""

    def __init__(self, message: str, kind: str = "validation"):
        super().__init__(message)
        self.kind = kind


# ----------------------------------------------------------------------------------------------
# Data types (the official ropd.rubric.v1 schema)
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Criterion:
    id: str          # "c1", "c2", ...
    category: str    # a scenario name (prompts.CATEGORIES), kept verbatim whatever the judge wrote
    text: str        # binary, self-contained, decidable from one response alone
    points: int      # 1..5 (App. D's "weight"): 5 decisive, 4 strongly discriminating, 2 support, 1 format


@dataclass(frozen=True)
class Rubric:
    criteria: tuple[Criterion, ...]
    question_domain: str | None = None                 # App. D's variant says what field the question is in
    estimated_student_pass_rate: float | None = None   # ... and how many rollouts it expects to pass

    @property
    def maximum_score(self) -> int:
        """Always the sum of the points (a judge's own wrong sum is corrected, as officially)."""
        return sum(c.points for c in self.criteria)

    def to_json(self) -> dict:
        """The official schema (what samples.jsonl records, whichever prompt made it)."""
        return {"schema_version": RUBRIC_SCHEMA,
                "rubrics": [{"criterion_id": c.id, "category": c.category, "criterion": c.text,
                             "points": c.points} for c in self.criteria],
                "maximum_score": self.maximum_score}


def score(rubric: Rubric, judgement: Sequence[bool]) -> float:
    """Eq. 4 (App. Eq. 5, Alg. 1 line 17): the weighted pass rate s = sum_k w_k v_k / sum_k w_k,
    in [0, 1].

    Recomputed from the booleans; the judge's own `final_score` is never trusted (the official
    code does trust it, so a judge's arithmetic slip reaches the reward).
    """
    if len(judgement) != len(rubric.criteria):
        raise ValueError(f"{len(judgement)} judgements for {len(rubric.criteria)} criteria")
    total = rubric.maximum_score
    return sum(c.points for c, v in zip(rubric.criteria, judgement) if v) / total if total else 0.0


# ----------------------------------------------------------------------------------------------
# Tolerant JSON extraction
# ----------------------------------------------------------------------------------------------

def _repair(s: str) -> str:
    """Fix what LLMs commonly get wrong, outside string literals only: trailing commas,
    Python's True/False/None, // line comments."""
    out, i, in_str = [], 0, False
    while i < len(s):
        ch = s[i]
        if in_str:
            out.append(ch)
            if ch == "\\" and i + 1 < len(s):
                out.append(s[i + 1])
                i += 2
                continue
            if ch == '"':
                in_str = False
            i += 1
            continue
        if ch == '"':
            in_str = True
        elif ch == "/" and s.startswith("//", i):
            while i < len(s) and s[i] != "\n":
                i += 1
            continue
        elif ch == ",":
            j = i + 1
            while j < len(s) and s[j] in " \t\r\n":
                j += 1
            if j < len(s) and s[j] in "}]":
                i += 1
                continue
        else:
            for word, repl in (("True", "true"), ("False", "false"), ("None", "null")):
                if s.startswith(word, i) and not (i and (s[i - 1].isalnum() or s[i - 1] == "_")):
                    end = i + len(word)
                    if end >= len(s) or not (s[end].isalnum() or s[end] == "_"):
                        out.append(repl)
                        i = end
                        break
            else:
                out.append(ch)
                i += 1
            continue
        out.append(ch)
        i += 1
    return "".join(out)


_OPENER = re.compile(r"[{\[]")
_THINK_END = re.compile(re.escape("</think>"))


def _matching_closes(text: str) -> dict[int, int]:
    """Each '{' or '[' -> the position of its matching close, in one pass (linear time). Quotes
    count only inside brackets (prose between values may hold a stray '"'); an opener never closed
    (a cut-off output) has no entry."""
    closes, stack, in_str, esc = {}, [], False, False
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch in "{[":
            stack.append(i)
        elif ch in "}]" and stack:
            closes[stack.pop()] = i
        elif ch == '"' and stack:
            in_str = True
    return closes


def _loads(span: str):
    """json.loads, then json.loads of the repaired span; (value, True) or (None, False)."""
    for attempt in (span, None):
        try:
            return json.loads(_repair(span) if attempt is None else attempt), True
        except (ValueError, RecursionError):  # malformed, or nested deeper than json will go
            continue
    return None, False


def _json_values(text: str, budget_per_char: int = 8):
    """Every top-level JSON value in `text`, in order, as (start, end, value), repaired where needed
    (the values inside a parsed one are not visited again; inside one that does not parse, they
    are). Stops at a value that is never closed (a cut-off output). Linear in len(text): the spans
    that fail to parse may cost at most `budget_per_char` times the text's length in all (a judge
    output of 8,000 nested '{' would otherwise be parsed 8,000 times over)."""
    closes, budget = _matching_closes(text), budget_per_char * len(text) + 10_000
    pos = 0
    while budget > 0 and (m := _OPENER.search(text, pos)):
        end = closes.get(m.start())
        if end is None:
            return
        value, ok = _loads(text[m.start():end + 1])
        if ok:
            yield m.start(), end, value
            pos = end + 1
        else:
            budget -= 2 * (end + 1 - m.start())  # json.loads and _repair each read the span once
            pos = m.start() + 1


def _own_part(text: str, values: list) -> tuple[str, list]:
    """The judge's own reply: what follows the last </think> that is not inside a JSON value (a
    rubric may well mention the tag), unless nothing follows it (the official code)."""
    spans = [(s, e) for s, e, _ in values]
    for m in reversed(list(_THINK_END.finditer(text))):
        k = bisect.bisect_right(spans, (m.start(), len(text))) - 1
        if k >= 0 and spans[k][0] <= m.start() <= spans[k][1]:
            continue  # quoted inside a value
        if not text[m.end():].strip():
            break
        return text[m.end():], [v for v in values if v[0] >= m.end()]
    return text, values


def extract_json(text: str, rank: Callable[[object], int] | None = None):
    """The JSON value in `text` that is the judge's own answer: among the values after its
    reasoning (see _own_part), the LAST of the highest `rank(value)` > 0 (a judge quotes a student's
    JSON or the rubric before its verdict, never after; a rank lets the schema's object win over an
    echoed list); else the first value at all (its parser then says what is wrong with it). Code
    fences and prose around it are ignored, common slips repaired, so "Grading answers [1] and
    [2]: {...}" gives the object, not [1]. Raises JudgeFormatError when no value can be read."""
    if not text or not text.strip():
        raise JudgeFormatError("empty judge output", "empty")
    own, values = _own_part(text, list(_json_values(text)))
    best, best_rank = None, 0
    for _, _, value in values:
        r = rank(value) if rank else 1
        if r > 0 and r >= best_rank:
            best, best_rank = value, r
    if best_rank:
        return best
    if values:
        return values[0][2]
    if _OPENER.search(own):
        raise JudgeFormatError("judge output has no complete, valid JSON value (truncated or malformed)", "parse")
    raise JudgeFormatError("judge output contains no JSON", "parse")


def _list_under(v, keys) -> list | None:
    """The list under the first of `keys` that holds one in object `v`, or `v` itself when it is a
    bare list; None otherwise."""
    if isinstance(v, dict):
        return next((v[k] for k in keys if isinstance(v.get(k), list)), None)
    return v if isinstance(v, list) else None


def _schema_rank(is_answer: Callable[[object], bool], schema: str) -> Callable[[object], int]:
    """rank(): 3 for an answer object of the schema asked for, 2 for one that names no schema, 1
    for one of another schema (its parser refuses it, saying why); 0 for anything else."""
    def rank(v) -> int:
        if not (isinstance(v, dict) and is_answer(v)):
            return 0
        got = v.get("schema_version", v.get("schema"))
        return 3 if got == schema else 2 if got is None else 1
    return rank


def _list_rank(keys, schema: str) -> Callable[[object], int]:
    """rank(): an object with a list under one of `keys` (ranked by its schema), else 1 for a bare
    list of objects (tolerated, but an echoed rubric list must not beat the verdict object)."""
    by_schema = _schema_rank(lambda v: _list_under(v, keys) is not None, schema)
    return lambda v: by_schema(v) or int(isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v))


def _check_schema(data, expected: str):
    """A schema_version, when the judge gave one, must be the one asked for."""
    got = data.get("schema_version", data.get("schema")) if isinstance(data, dict) else None
    if got is not None and got != expected:
        raise JudgeFormatError(f"schema_version {got!r}; expected {expected!r}", "schema")


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------

def _as_points(value, where: str) -> int:
    if isinstance(value, bool):
        raise JudgeFormatError(f"{where}: points must be an integer 1-5, got {value!r}")
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(\.0+)?\s*", value):
        value = float(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or not 1 <= value <= 5:
        raise JudgeFormatError(f"{where}: points must be an integer 1-5, got {value!r}")
    return value


RUBRIC_KEYS = ("rubrics", "criteria", "rubric")


def parse_rubric(text: str, min_criteria: int = MIN_CRITERIA, max_criteria: int = MAX_CRITERIA,
                 variant: str = "official") -> Rubric:
    """Eq. 2: judge text -> Rubric, in the official schema ({"schema_version": "ropd.rubric.v1",
    "rubrics": [{criterion_id, category, criterion, points}], "maximum_score"}) or App. D's
    (variant="paper": "weight" for points, plus K, max_weighted_sum, question_domain,
    estimated_student_pass_rate). Tolerates fences, prose, trailing commas, a bare criteria list,
    numeric strings for points, a wrong maximum_score / K / max_weighted_sum (recomputed). Rejects
    everything else, and another schema_version than the one asked for."""
    data = extract_json(text, _list_rank(RUBRIC_KEYS, RUBRIC_SCHEMAS[variant]))
    _check_schema(data, RUBRIC_SCHEMAS[variant])
    items = _list_under(data, RUBRIC_KEYS)
    if items is None:
        raise JudgeFormatError("rubric JSON has no 'rubrics' list", "schema")
    if not min_criteria <= len(items) <= max_criteria:
        raise JudgeFormatError(f"rubric has {len(items)} criteria; expected {min_criteria}-{max_criteria}")
    criteria, seen = [], set()
    for k, item in enumerate(items):
        where = f"criterion {k + 1}"
        if not isinstance(item, dict):
            raise JudgeFormatError(f"{where} is not an object", "schema")
        cid = str(item.get("criterion_id", item.get("id", f"c{k + 1}"))).strip() or f"c{k + 1}"
        if cid in seen:
            raise JudgeFormatError(f"duplicate criterion id {cid!r}")
        seen.add(cid)
        body = item.get("criterion", item.get("text", item.get("description")))
        if not isinstance(body, str) or not body.strip():
            raise JudgeFormatError(f"{where} ({cid}) has no criterion text")
        points = _as_points(item.get("points", item.get("weight")), f"{where} ({cid})")
        criteria.append(Criterion(cid, str(item.get("category", "")).strip(), body.strip(), points))
    meta = data if isinstance(data, dict) else {}
    rate = meta.get("estimated_student_pass_rate")
    return Rubric(tuple(criteria), meta.get("question_domain") if isinstance(meta.get("question_domain"), str) else None,
                  float(rate) if isinstance(rate, (int, float)) and not isinstance(rate, bool) else None)


_TRUE = {"true", "yes", "pass", "passed", "met", "1", "y"}
_FALSE = {"false", "no", "fail", "failed", "not met", "unmet", "0", "n"}


def _as_bool(v, where: str) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    raise JudgeFormatError(f"{where}: judgement must be true/false, got {v!r}")


def _judgement(j, rubric: Rubric, where: str) -> list[bool]:
    """One answer's judgement: a list in rubric order, or an object keyed by criterion id."""
    ids = [c.id for c in rubric.criteria]
    if isinstance(j, dict):
        missing = [i for i in ids if i not in j]
        if missing:
            raise JudgeFormatError(f"{where}: no judgement for criteria {missing}")
        j = [j[i] for i in ids]
    if not isinstance(j, list):
        raise JudgeFormatError(f"{where}: judgement is not a list")
    if len(j) != len(ids):
        raise JudgeFormatError(f"{where}: {len(j)} judgements for {len(ids)} criteria")
    return [_as_bool(v, where) for v in j]


VERDICT_KEYS = ("answers", "results", "verdicts")


def parse_verdicts(text: str, rubric: Rubric, n_answers: int) -> list[list[bool]]:
    """Eq. 3: the batch verifier's text ({"schema_version": "ropd.batch_verifier.v2", "answers":
    [{answer_index, judgement, final_score}]}) -> one boolean list per answer (answer order 1..n),
    each of exactly the rubric's length. Entries may come out of order (answer_index puts them
    back) and a judgement may be keyed by criterion id. The judge's `final_score` is ignored (see
    `score`)."""
    data = extract_json(text, _list_rank(VERDICT_KEYS, VERDICT_SCHEMA))
    _check_schema(data, VERDICT_SCHEMA)
    results = _list_under(data, VERDICT_KEYS)
    if results is None:
        raise JudgeFormatError("verdict JSON has no 'answers' list", "schema")
    if len(results) != n_answers:
        raise JudgeFormatError(f"verdict has {len(results)} answers; expected {n_answers}")
    out: list[list[bool] | None] = [None] * n_answers
    for k, r in enumerate(results):
        if not isinstance(r, dict):
            raise JudgeFormatError(f"verdict entry {k + 1} is not an object", "schema")
        idx = r.get("answer_index", k + 1)
        try:
            idx = int(idx)
        except (TypeError, ValueError):
            raise JudgeFormatError(f"verdict entry {k + 1}: bad answer_index {idx!r}") from None
        if not 1 <= idx <= n_answers:
            raise JudgeFormatError(f"answer_index {idx} out of range 1-{n_answers}")
        if out[idx - 1] is not None:
            raise JudgeFormatError(f"answer_index {idx} appears twice")
        out[idx - 1] = _judgement(r.get("judgement", r.get("judgements", r.get("judgment"))), rubric,
                                  f"answer {idx}")
    return out  # type: ignore[return-value]


def judge_scores(text: str, n_answers: int, per_response: bool = False) -> list[float]:
    """--reward final-score: the verifier's own total per answer (answer order 1..n): the batch
    verifier's `final_score`, or App. D's per-response `weighted_score`. The official code's reward
    is this total / the rubric's maximum score (not recomputed from the booleans, see `score`). Call
    it on a text whose verdicts parsed; a total that is missing or not a number is rejected."""
    key = "weighted_score" if per_response else "final_score"
    if per_response:
        data = extract_json(text, lambda v: isinstance(v, dict) and key in v)
        entries = [data]
    else:
        data = extract_json(text, lambda v: isinstance(v, dict) and isinstance(_list_under(v, VERDICT_KEYS), list)
                            and len(_list_under(v, VERDICT_KEYS)) == n_answers)
        entries = sorted(_list_under(data, VERDICT_KEYS) or [],
                         key=lambda r: int(r.get("answer_index", 0)) if isinstance(r, dict) else 0)
    out = []
    for k, r in enumerate(entries):
        value = r.get(key) if isinstance(r, dict) else None
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise JudgeFormatError(f"answer {k + 1}: no numeric {key} (got {value!r})", "schema")
        out.append(float(value))
    if len(out) != n_answers:
        raise JudgeFormatError(f"{len(out)} {key} values; expected {n_answers}", "validation")
    return out


def parse_single_verdict(text: str, rubric: Rubric) -> list[bool]:
    """Eq. 3, App. D's per-response verifier: {"schema_version": "black_opd.verifier.v1",
    "judgements": [...], "weighted_score", "pass_rate"} -> the booleans (the scores are ignored)."""
    has_judgements = lambda v: isinstance(v, dict) and ("judgements" in v or "judgement" in v)  # noqa: E731
    data = extract_json(text, _schema_rank(has_judgements, PAPER_VERDICT_SCHEMA))
    _check_schema(data, PAPER_VERDICT_SCHEMA)
    if not has_judgements(data):
        raise JudgeFormatError("verdict JSON has no 'judgements' list", "schema")
    return _judgement(data.get("judgements", data.get("judgement")), rubric, "response")


def parse_score(text: str, tag: str) -> float:
    """A holistic judge's score as a reward in [0, 1]: T-Judge's number in [0, 1] (tag
    ropd.tjudge.v1), or OVD's integer 0-9 divided by 9 (ropd.ovd.v1). A score off its scale is
    rejected rather than guessed at (is 2 on a 0-1 prompt 2/10 or 2/5?)."""
    data = extract_json(text, _schema_rank(lambda v: "score" in v, tag))
    _check_schema(data, tag)
    value = data.get("score") if isinstance(data, dict) else None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise JudgeFormatError(f"judge output has no numeric 'score' (got {value!r})")
    if tag == OVD_SCHEMA:
        if not (float(value).is_integer() and 0 <= value <= 9):
            raise JudgeFormatError(f"OVD score {value} is not an integer from 0 to 9")
        return float(value) / 9
    if not 0 <= value <= 1:
        raise JudgeFormatError(f"T-Judge score {value} is outside [0, 1]")
    return float(value)


# ----------------------------------------------------------------------------------------------
# The blind pool (Eq. 3, §4.3)
# ----------------------------------------------------------------------------------------------

def blind_pool(prompt_id: str, references: Sequence[str], rollouts: Sequence[str]):
    """Eq. 3's blind pool (§4.3: the references anchor the scale): references and rollouts
    shuffled together by a hash of (prompt id, source, index, text).

    Returns (answers, owners): answers in pool order, owners[i] = ("reference"|"student", index).
    Deterministic (same inputs, same order: cache-friendly and reproducible) and blind: nothing in
    the order or the labels says who wrote what.
    """
    tagged = [("reference", i, t) for i, t in enumerate(references)] + \
             [("student", i, t) for i, t in enumerate(rollouts)]

    def key(item):
        src, i, t = item
        return hashlib.sha256(f"{prompt_id}\x00{src}\x00{i}\x00{t}".encode()).hexdigest()

    tagged.sort(key=key)
    return [t for _, _, t in tagged], [(s, i) for s, i, _ in tagged]


def dedupe(references: Sequence[str]) -> list[str]:
    """Eq. 1: exact duplicate references are dropped (order kept)."""
    seen, out = set(), []
    for r in references:
        if r not in seen:
            seen.add(r)
            out.append(r)
    return out


# ----------------------------------------------------------------------------------------------
# The ROPD reward for a batch of prompts (§2.2): rubric induction, blind verification, pass rates
# ----------------------------------------------------------------------------------------------

@dataclass
class Group:
    """One prompt's group: its id, question, teacher references and student rollouts."""
    prompt_id: str
    question: str
    references: list[str]
    rollouts: list[str]
    reference_errors: list[str] = field(default_factory=list)  # why some references are missing


@dataclass
class GroupResult:
    """What the judge made of one group: the rollouts' rewards and the record of how."""
    rewards: list[float]                       # one per rollout, in rollout order
    rubrics: list[Rubric] = field(default_factory=list)  # the shared rubric (or one per rollout)
    judgements: list[list[bool]] | None = None  # per rollout, under its rubric
    references: list[str] = field(default_factory=list)  # what the judge saw (duplicates dropped)
    reference_scores: list[float] = field(default_factory=list)
    fallback: str | None = None                # why this group got reward 0 (failure policy), else None
    format_errors: list[str] = field(default_factory=list)

    @property
    def rubric(self) -> Rubric | None:
        return self.rubrics[0] if len(self.rubrics) == 1 else None


@dataclass(frozen=True)
class JudgeSettings:
    """How the rubricator and the verifier are asked. Defaults: the official code; the paper's
    App. D prompts and the Table 6 ablations are one field away."""
    retries: int = 2                   # re-asks of an output that does not parse
    min_criteria: int = MIN_CRITERIA   # K, the rubric's size, is in [min, max]
    max_criteria: int = MAX_CRITERIA
    verifier_chunk: int | None = None  # answers per batch verifier call (None: the whole pool at once)
    rubricator_instructions: str = ""  # appended to the rubricator prompt
    verifier_instructions: str = ""    # appended to the verifier prompt
    rubric_prompt: str = "official"    # "official" or "paper" (App. D's multi-teacher rubricator)
    verifier: str = "batch"            # "batch" (official) or "per-response" (App. D)
    min_references: int | None = None  # fewer teacher answers: the group falls back (None: all K it was
                                       # given, failed ones included, as the run's default)
    per_rollout_rubrics: bool = False  # Table 6 "w/o sharing": one rubric per (references, rollout)
    sighted_verifier: bool = False     # Table 6 "w/o blind scoring": the verifier knows who wrote what
    pool_references: bool = True       # False: a pool of the rollouts alone (no difficulty anchor)
    reward: str = "pass-rate"          # "pass-rate" (Eq. 4, recomputed) or "final-score" (the judge's own total,
    #                                    as the official code's reward)
    retry_policy: str = "uniform"      # "uniform": `retries` re-asks for any failure; "official": per stage and
    #                                    failure kind (OFFICIAL_REASKS)


# The official providers file's re-ask counts per stage and kind of failure. A "transport" failure
# is a request that failed after its own transport retries (teacher.Transport). The verifier's
# step retry (the whole call once more on a timeout, HTTP error, empty or incomplete output or an
# open circuit) is folded in: transport 0 + 1; empty 1 response re-ask, twice over: 3.
OFFICIAL_REASKS = {
    "rubricator": {"empty": 0, "parse": 0, "schema": 2, "validation": 2, "transport": 0},
    "verifier": {"empty": 3, "parse": 1, "schema": 1, "validation": 0, "transport": 1},
}


def reask_budget(settings: "JudgeSettings", stage: str):
    """How many times `stage` re-asks: an int (any failure) or kind -> count (the official policy)."""
    return OFFICIAL_REASKS[stage] if settings.retry_policy == "official" and stage in OFFICIAL_REASKS else settings.retries


# complete(chats, stage, attempt, valid, tag) -> one text (or an Exception) per chat. `valid(i,
# text)` says whether chat i's text parses (a caching backend should not keep the ones that do
# not); `tag` is the schema_version the output must have (for APIs with structured outputs).
CompleteFn = Callable[..., list]


def ask_judge(complete: CompleteFn, chats: dict, stage: str, *, retries, parse, errors: dict,
              tag: str | None = None):
    """Send chats (key -> messages), parse each reply; re-ask only the failed ones: up to `retries`
    more times (an int), or up to retries[kind] times per kind of failure (a dict: the official
    per-stage policy; kinds are JudgeFormatError.kind, or "transport" for a request that failed).
    Returns key -> parsed value for those that succeeded; errors[key] lists why not.
    A `complete` that returns more or fewer replies than chats is a bug in it: no reply of that call
    is used (which reply answers which chat is unknown) and every chat's errors say so."""
    done, todo = {}, dict(chats)
    used: dict = {}
    for attempt in itertools.count():
        if not todo:
            break
        keys = list(todo)

        def valid(i, text, keys=keys):
            try:
                parse(keys[i], text)
                return True
            except Exception:  # noqa: BLE001
                return False

        replies = complete([todo[k] for k in keys], stage, attempt, valid, tag=tag)
        if len(replies) != len(keys):
            for k in keys:
                errors.setdefault(k, []).append(f"{stage}: complete returned {len(replies)} replies for "
                                                f"{len(keys)} chats")
                if _out_of_reasks(used, key=k, kind="count", attempt=attempt, retries=retries):
                    del todo[k]
            continue
        for k, reply in zip(keys, replies):
            try:
                if isinstance(reply, Exception):
                    raise reply
                done[k] = parse(k, reply)
                del todo[k]
            except Exception as e:  # JudgeFormatError or a transport error after its own retries
                errors.setdefault(k, []).append(f"{stage}: {type(e).__name__}: {e}")
                if _out_of_reasks(used, key=k, kind=getattr(e, "kind", "transport"), attempt=attempt,
                                  retries=retries):
                    del todo[k]
    return done


def _out_of_reasks(used: dict, *, key, kind: str, attempt: int, retries) -> bool:
    """Whether a chat that just failed (`kind`) has no re-ask left: `retries` an int counts attempts
    of any kind; a dict (the official policy) counts each kind apart (a kind it does not name: 0)."""
    if not isinstance(retries, dict):
        return attempt >= retries
    used[key, kind] = used.get((key, kind), 0) + 1
    return used[key, kind] > retries.get(kind, 0)


def induce_rubrics(complete: CompleteFn, groups: Sequence[Group], settings: JudgeSettings, *,
                   errors: dict) -> dict[tuple[int, int], Rubric]:
    """Rubric induction (§2.2, Eq. 2): one rubricator call per group, which sees the question, the
    references and the rollouts - labelled as such, the contrast is the point - and writes one
    rubric shared by the whole group. Table 6's "w/o sharing" ablation instead writes one rubric
    per (references, rollout j) pair: G calls per group. Groups with too few references get none.
    Returns (group, unit) -> rubric, unit 0 for a shared rubric, unit j for rollout j's."""
    chats = {}
    for gi, g in enumerate(groups):
        if len(g.references) < min_references(g, settings):
            continue
        refs = dedupe(g.references)
        for u, rollouts in enumerate(_units(g, settings)):
            chats[(gi, u)] = prompts.rubricator_messages(
                g.question, refs, rollouts, min_criteria=settings.min_criteria, max_criteria=settings.max_criteria,
                extra_instructions=settings.rubricator_instructions, variant=settings.rubric_prompt)

    def parse(key, text):
        return parse_rubric(text, settings.min_criteria, settings.max_criteria, settings.rubric_prompt)
    return ask_judge(complete, chats, "rubricator", retries=reask_budget(settings, "rubricator"), parse=parse,
                     errors=errors, tag=RUBRIC_SCHEMAS[settings.rubric_prompt])


def _units(g: Group, settings: JudgeSettings) -> list[list[str]]:
    """The rollouts each rubric of a group covers: all of them (one shared rubric), or one each
    (Table 6's per-rollout rubrics)."""
    return [[r] for r in g.rollouts] if settings.per_rollout_rubrics else [list(g.rollouts)]


def verify_blindly(complete: CompleteFn, groups: Sequence[Group], rubrics: dict, settings: JudgeSettings, *,
                   errors: dict) -> dict[tuple[int, int], list]:
    """Blind verification (§2.2, Eq. 3): a rubric's references and rollouts are shuffled into one
    pool (blind_pool) and graded criterion by criterion, in one verifier call (or `verifier_chunk`
    answers per call, or one call per answer: App. D's per-response verifier). The references stay
    in the pool: they anchor the scale across problem difficulties (§4.3); Table 6's ablations
    label them (sighted_verifier) or leave them out (pool_references=False). Returns (group, unit)
    -> [((source, index), judgement, the judge's own total or None), ...] for the units whose every
    call parsed (the total only with reward="final-score")."""
    pools, chats, sizes = {}, {}, {}
    for (gi, u), rub in rubrics.items():
        g = groups[gi]
        refs = dedupe(g.references) if settings.pool_references else []
        answers, owners = blind_pool(g.prompt_id, refs, _units(g, settings)[u])
        if settings.per_rollout_rubrics:  # the one rollout of unit u is rollout u of the group
            owners = [(src, u if src == "student" else i) for src, i in owners]
        pools[(gi, u)] = (answers, owners)
        sources = [src for src, _ in owners]
        for c, (chat, n) in enumerate(_verifier_chats(g.question, rub, answers, sources, settings)):
            chats[(gi, u, c)], sizes[(gi, u, c)] = chat, n

    def parse_chunk(key, text):
        """-> [(judgement, the judge's own total or None)] per answer of the call."""
        one = settings.verifier == "per-response"
        got = [parse_single_verdict(text, rubrics[key[:2]])] if one else parse_verdicts(text, rubrics[key[:2]], sizes[key])
        totals = judge_scores(text, sizes[key], one) if settings.reward == "final-score" else [None] * len(got)
        return list(zip(got, totals))

    tag = PAPER_VERDICT_SCHEMA if settings.verifier == "per-response" else VERDICT_SCHEMA
    verdicts = ask_judge(complete, chats, "verifier", retries=reask_budget(settings, "verifier"), parse=parse_chunk,
                         errors=errors, tag=tag)
    graded = {}
    for unit, (_, owners) in pools.items():
        keys = [k for k in chats if k[:2] == unit]
        if all(k in verdicts for k in keys):
            graded[unit] = [(o, j, total) for o, (j, total) in zip(owners, [v for k in keys for v in verdicts[k]])]
    return graded


def _verifier_chats(question: str, rub: Rubric, answers: list[str], sources: list[str], settings: JudgeSettings):
    """The verifier calls for one pool, each with the number of answers it grades: every answer in
    one call (official), `verifier_chunk` answers per call, or one per call (App. D's per-response
    verifier)."""
    extra = settings.verifier_instructions
    if settings.verifier == "per-response":
        return [(prompts.single_verifier_messages(question, rub, a, extra_instructions=extra,
                                                  source=src if settings.sighted_verifier else None), 1)
                for a, src in zip(answers, sources)]
    size = settings.verifier_chunk or len(answers)
    return [(prompts.verifier_messages(question, rub, answers[i:i + size], extra_instructions=extra,
                                       sources=sources[i:i + size] if settings.sighted_verifier else None),
             len(answers[i:i + size]))
            for i in range(0, len(answers), size)]


def weighted_pass_rates(group: Group, units: list[tuple[Rubric, list]]) -> GroupResult:
    """Eq. 4: every pooled answer's weighted pass rate under its rubric (see `score`), given back to
    its owner; or, where the verifier's own total came with it (--reward final-score, the official
    code's reward), that total / the rubric's maximum score, as the judge wrote it (a judge that
    adds wrongly moves the reward; nothing clips it). The rollouts' scores are their rewards; the
    references' (averaged over the rubrics that graded them) are only logged, never a reward."""
    refs = dedupe(group.references)
    res = GroupResult([0.0] * len(group.rollouts), [rub for rub, _ in units], [None] * len(group.rollouts), refs)
    ref_sums, refs_in_pool = [0.0] * len(refs), False
    for rub, graded in units:
        for (src, i), judgement, total in graded:
            value = score(rub, judgement) if total is None else total / rub.maximum_score
            if src == "student":
                res.rewards[i], res.judgements[i] = value, judgement
            else:
                ref_sums[i] += value
                refs_in_pool = True
    res.reference_scores = [x / len(units) for x in ref_sums] if refs_in_pool else []
    return res


def ropd_reward(complete: CompleteFn, groups: Sequence[Group],
                settings: JudgeSettings = JudgeSettings()) -> list[GroupResult]:
    """The ROPD reward (§2.2, Eqs. 2-4) for a batch of groups: prompts, references and rollouts in;
    one reward per rollout and a record of what the judge did out. Needs only this module,
    prompts.py and a `complete` function that sends chats to the judge (CompleteFn).

    Each stage's calls go out as one batch (a concurrent backend runs them in parallel). A group
    with fewer than `settings.min_references` teacher answers (default: all K it was given), or whose
    rubric or verdicts are still invalid after `settings.retries` re-asks (a `complete` that returns
    the wrong number of replies counts as invalid, and says so), falls back: reward 0 for all its
    rollouts, so its advantage is 0 and it teaches nothing; the result says why (the caller counts
    fallbacks and stops the run above a rate)."""
    errors: dict = {}
    rubrics = induce_rubrics(complete, groups, settings, errors=errors)
    graded = verify_blindly(complete, groups, rubrics, settings, errors=errors)
    results = []
    for gi, g in enumerate(groups):
        units = [u for u in graded if u[0] == gi]
        n_units = len(_units(g, settings))
        if len(units) == n_units:
            res = weighted_pass_rates(g, [(rubrics[u], graded[u]) for u in sorted(units)])
        else:
            res = GroupResult([0.0] * len(g.rollouts), [rubrics[u] for u in sorted(rubrics) if u[0] == gi],
                              references=dedupe(g.references), fallback=_why_not(g, gi, rubrics, n_units, settings))
        res.format_errors = g.reference_errors + [e for k, errs in errors.items() if k[0] == gi for e in errs]
        results.append(res)
    return results


def min_references(g: Group, settings: JudgeSettings) -> int:
    """The fewest teacher answers a group needs (at least 1): `settings.min_references`, or by default
    all K it was given (its references and the failed ones), as the run does (--min-references 0)."""
    need = settings.min_references
    return max(1, len(g.references) + len(g.reference_errors) if need is None else need)


def _why_not(g: Group, gi: int, rubrics: dict, n_units: int, settings: JudgeSettings) -> str:
    """Why a group fell back (it is logged, and the run's error names it)."""
    need = min_references(g, settings)
    if len(g.references) < need:
        return "no references" if not g.references else f"too few references ({len(g.references)} < {need})"
    return "rubricator failed" if sum(u[0] == gi for u in rubrics) < n_units else "verifier failed"


def holistic_reward(complete: CompleteFn, groups: Sequence[Group], *, stage: str, tag: str,
                    retries: int = 2) -> list[GroupResult]:
    """A baseline's judge (§3.1): the teacher scores each rollout on its own (no rubric, no
    references) and the score is the reward: T-Judge (stage "tjudge", a score in [0, 1]) or OVD
    (stage "ovd", a verbal 0-9 score / 9). A group with any unscorable rollout falls back to 0."""
    make = prompts.tjudge_messages if tag == TJUDGE_SCHEMA else prompts.ovd_messages
    chats = {(gi, j): make(g.question, t) for gi, g in enumerate(groups) for j, t in enumerate(g.rollouts)}
    errors: dict = {}

    def parse(key, text):
        return parse_score(text, tag)
    scores = ask_judge(complete, chats, stage, retries=retries, parse=parse, errors=errors, tag=tag)
    results = []
    for gi, g in enumerate(groups):
        keys = [(gi, j) for j in range(len(g.rollouts))]
        ok = all(k in scores for k in keys)
        results.append(GroupResult(rewards=[scores[k] if ok else 0.0 for k in keys],
                                   fallback=None if ok else f"{stage} failed",
                                   format_errors=[e for k in keys for e in errors.get(k, [])]))
    return results


def tjudge_reward(complete: CompleteFn, groups: Sequence[Group],
                  settings: JudgeSettings = JudgeSettings()) -> list[GroupResult]:
    """The T-Judge baseline (§3.1): one holistic teacher score in [0, 1] per rollout."""
    return holistic_reward(complete, groups, stage="tjudge", tag=TJUDGE_SCHEMA, retries=settings.retries)


def ovd_reward(complete: CompleteFn, groups: Sequence[Group],
               settings: JudgeSettings = JudgeSettings()) -> list[GroupResult]:
    """The OVD baseline (§3.1, On-policy Verbal Distillation): the teacher's discrete verbal score
    0-9 of each rollout; the reward is score / 9 (our scaling, to [0, 1] like every other reward)."""
    return holistic_reward(complete, groups, stage="ovd", tag=OVD_SCHEMA, retries=settings.retries)
