"""rubric.py - how the teacher's text becomes a reward (arXiv 2605.07396, §2.2, Eqs. 2-4, App. D).

    strip_reasoning     the judge sees only what follows the last </think>
    rubricator_messages Eq. 2: one call per prompt sees K references + G rollouts, writes one rubric
    parse_rubric        Eq. 2: tolerant JSON extraction, strict validation -> Rubric
    blind_pool          Eq. 3: references and rollouts shuffled by a hash, labelled Answer 1..K+G
    verifier_messages   Eq. 3: one blind batched call scores every answer against the rubric
    parse_verdicts      Eq. 3: -> one boolean per criterion per answer
    score               Eq. 4: s_i = sum_k w_k v_ik / sum_k w_k, recomputed from the booleans
    ropd_reward         Eqs. 2-4 for a batch of prompts, given any `complete` function: the ROPD
                        reward (induce_rubrics, verify_blindly, weighted_pass_rates), to copy

Pure Python (stdlib only), no tensors: the caller passes a function that sends chats to a judge.
Every invalid judge output raises JudgeFormatError with a message that says what was wrong.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

RUBRIC_SCHEMA = "ropd.rubric.v1"
VERDICT_SCHEMA = "ropd.batch_verifier.v2"
TJUDGE_SCHEMA = "ropd.tjudge.v1"
CATEGORIES = ("task_fulfillment", "response_quality", "reasoning_quality")
MIN_CRITERIA, MAX_CRITERIA = 4, 12


class JudgeFormatError(ValueError):
    """The judge's output could not be turned into a valid rubric or verdict list."""


# ----------------------------------------------------------------------------------------------
# Data types (mirroring the official ropd.rubric.v1 schema)
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Criterion:
    id: str          # "c1", "c2", ...
    category: str    # one of CATEGORIES (kept verbatim if the judge used another label)
    text: str        # binary, self-contained, judgeable from one response alone
    points: int      # 1..5: 5 decisive bottleneck, 4 strongly discriminating, 2 support, 1 format


@dataclass(frozen=True)
class Rubric:
    criteria: tuple[Criterion, ...]

    @property
    def maximum_score(self) -> int:
        """Always the sum of the points (a judge's own wrong sum is corrected, as officially)."""
        return sum(c.points for c in self.criteria)

    def to_json(self) -> dict:
        return {"schema": RUBRIC_SCHEMA,
                "criteria": [{"criterion_id": c.id, "category": c.category, "criterion": c.text,
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


def strip_reasoning(text: str) -> str:
    """The judge sees only what follows the last </think> (the official code), unless that is empty."""
    if "</think>" in text:
        after = text.rsplit("</think>", 1)[1].strip()
        if after:
            return after
    return text.strip()


# ----------------------------------------------------------------------------------------------
# Prompts (our own words, from the rules of the official method)
# ----------------------------------------------------------------------------------------------

RUBRICATOR_SYSTEM = f"""You write grading rubrics. You will see a question, several reference answers \
written by a strong model, and several answers written by students. Write ONE rubric that a separate, \
blind grader will use to grade each answer on its own.

How to build it:
1. Start with a base rubric that would fit any answer to this question: what a correct, complete \
answer must do. Then sharpen one or two criteria so they catch the most important difference you \
see between the reference answers and the student answers.
2. Between {{min_criteria}} and {{max_criteria}} criteria. Each criterion is a single yes/no check, \
specific, self-contained, and decidable by reading one response alone.
3. Never write "matches the reference" (its final answer, method or wording). The references may be \
wrong; a valid alternative method must pass. If the students are as good as the references, do not \
invent criteria that favour the references.
4. Categories: "task_fulfillment" (does it do what was asked, meet the stated requirements), \
"response_quality" (observable qualities of the response: correctness of stated facts, clarity, \
completeness), "reasoning_quality" (only when the reasoning itself really separates the answers).
5. Points are integers from 1 to 5: 5 = decisive (failing it means the core task is not done); \
4 = strongly discriminating; 2 = supporting merit; 1 = routine or format (pure format is never worth \
more than 1); 3 is rare. Usually only one or two criteria get 4 or 5 points.

Reply with JSON only, in this form:
{{{{"schema": "{RUBRIC_SCHEMA}", "criteria": [{{{{"criterion_id": "c1", "category": "task_fulfillment", \
"criterion": "...", "points": 5}}}}, ...], "maximum_score": <sum of points>}}}}"""

VERIFIER_SYSTEM = f"""You grade answers against a rubric. You will see a question, a rubric of numbered \
criteria, and several answers labelled Answer 1, Answer 2, ... For every answer and every criterion, \
decide true or false.

Rules: a criterion is true only if every condition in it is clearly met by that answer; there is no \
partial credit. Judge each answer on its own, never by comparing it with the other answers. Length, \
confidence and style earn nothing unless a criterion asks for them.

Reply with JSON only, one entry per answer, in order, each with one boolean per criterion in rubric \
order:
{{"schema": "{VERDICT_SCHEMA}", "results": [{{"answer_index": 1, "judgement": [true, false, ...], \
"final_score": <sum of the points of the true criteria>}}, ...]}}"""

TJUDGE_SYSTEM = f"""You grade one answer to a question. Give a single holistic score between 0 and 1 \
for how correct and complete the answer is (1 = fully correct and complete, 0 = wrong or missing). \
Judge the answer on its own merits; length, confidence and style earn nothing.

Reply with JSON only: {{"schema": "{TJUDGE_SCHEMA}", "score": <number between 0 and 1>}}"""


def _block(tag: str, text: str, index: int | None = None) -> str:
    attr = f' index="{index}"' if index is not None else ""
    return f"<{tag}{attr}>\n{text}\n</{tag}>"


def rubricator_messages(question: str, references: Sequence[str], rollouts: Sequence[str],
                        min_criteria: int = MIN_CRITERIA, max_criteria: int = MAX_CRITERIA,
                        extra_instructions: str = "") -> list[dict]:
    """Eq. 2 (prompt: App. D): the rubricator sees who is who (references vs students): the
    contrast is the point."""
    system = RUBRICATOR_SYSTEM.format(min_criteria=min_criteria, max_criteria=max_criteria)
    if extra_instructions:
        system += "\n\nAdditional instructions:\n" + extra_instructions
    parts = [_block("question", question)]
    parts += [_block("reference", strip_reasoning(r), i + 1) for i, r in enumerate(references)]
    parts += [_block("student", strip_reasoning(s), i + 1) for i, s in enumerate(rollouts)]
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]


def render_rubric(rubric: Rubric) -> str:
    return "\n".join(f"{i + 1}. [{c.id}, {c.points} points] {c.text}"
                     for i, c in enumerate(rubric.criteria))


def verifier_messages(question: str, rubric: Rubric, answers: Sequence[str],
                      extra_instructions: str = "") -> list[dict]:
    """Eq. 3 (prompt: App. D): blind batched verification; `answers` are already shuffled (see
    blind_pool)."""
    system = VERIFIER_SYSTEM
    if extra_instructions:
        system += "\n\nAdditional instructions:\n" + extra_instructions
    parts = [_block("question", question), _block("rubric", render_rubric(rubric))]
    parts += [_block("answer", strip_reasoning(a), i + 1) for i, a in enumerate(answers)]
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]


def tjudge_messages(question: str, answer: str) -> list[dict]:
    """T-Judge baseline: one holistic score per rollout, no rubric, no references."""
    user = _block("question", question) + "\n\n" + _block("answer", strip_reasoning(answer), 1)
    return [{"role": "system", "content": TJUDGE_SYSTEM}, {"role": "user", "content": user}]


# ----------------------------------------------------------------------------------------------
# Tolerant JSON extraction
# ----------------------------------------------------------------------------------------------

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.S)


def _balanced_span(text: str, start: int) -> str | None:
    """The JSON value starting at text[start] ('{' or '['), up to its matching close, or None."""
    depth, in_str, esc = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_str:
            esc = (ch == "\\") and not esc
            if ch == '"' and not esc:
                in_str = False
            elif ch != "\\":
                esc = False
            continue
        if ch == '"':
            in_str = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
    return None


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


def extract_json(text: str):
    """The first JSON object (or array) in `text`: code fences and surrounding prose are ignored,
    common slips repaired. Raises JudgeFormatError when none can be read."""
    if not text or not text.strip():
        raise JudgeFormatError("empty judge output")
    text = strip_reasoning(text)
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    saw_open = False
    for cand in candidates:
        for m in re.finditer(r"[{\[]", cand):
            saw_open = True
            span = _balanced_span(cand, m.start())
            if span is None:  # never closed: the output was cut off; inner values are fragments
                break
            for attempt in (span, _repair(span)):
                try:
                    return json.loads(attempt)
                except json.JSONDecodeError:
                    pass
    if saw_open:
        raise JudgeFormatError("judge output has no complete, valid JSON value (truncated or malformed)")
    raise JudgeFormatError("judge output contains no JSON")


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


def parse_rubric(text: str, min_criteria: int = MIN_CRITERIA,
                 max_criteria: int = MAX_CRITERIA) -> Rubric:
    """Eq. 2: judge text -> Rubric. Tolerates fences, prose, trailing commas, a bare criteria list,
    numeric strings for points, a wrong maximum_score (recomputed). Rejects everything else."""
    data = extract_json(text)
    if isinstance(data, dict):
        items = data.get("criteria", data.get("rubric"))
    else:
        items = data
    if not isinstance(items, list):
        raise JudgeFormatError("rubric JSON has no 'criteria' list")
    if not min_criteria <= len(items) <= max_criteria:
        raise JudgeFormatError(f"rubric has {len(items)} criteria; expected {min_criteria}-{max_criteria}")
    criteria, seen = [], set()
    for k, item in enumerate(items):
        where = f"criterion {k + 1}"
        if not isinstance(item, dict):
            raise JudgeFormatError(f"{where} is not an object")
        cid = str(item.get("criterion_id", item.get("id", f"c{k + 1}"))).strip() or f"c{k + 1}"
        if cid in seen:
            raise JudgeFormatError(f"duplicate criterion id {cid!r}")
        seen.add(cid)
        body = item.get("criterion", item.get("text", item.get("description")))
        if not isinstance(body, str) or not body.strip():
            raise JudgeFormatError(f"{where} ({cid}) has no criterion text")
        category = str(item.get("category", "")).strip().lower().replace(" ", "_") or "task_fulfillment"
        points = _as_points(item.get("points", item.get("weight")), f"{where} ({cid})")
        criteria.append(Criterion(cid, category, body.strip(), points))
    return Rubric(tuple(criteria))


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


def parse_verdicts(text: str, rubric: Rubric, n_answers: int) -> list[list[bool]]:
    """Eq. 3: judge text -> one boolean list per answer (answer order 1..n), each of exactly the
    rubric's length. A judgement may also be an object keyed by criterion id. The judge's
    `final_score` is ignored (see `score`)."""
    data = extract_json(text)
    results = data.get("results", data.get("answers", data.get("verdicts"))) if isinstance(data, dict) else data
    if not isinstance(results, list):
        raise JudgeFormatError("verdict JSON has no 'results' list")
    if len(results) != n_answers:
        raise JudgeFormatError(f"verdict has {len(results)} answers; expected {n_answers}")
    ids = [c.id for c in rubric.criteria]
    out: list[list[bool] | None] = [None] * n_answers
    for k, r in enumerate(results):
        if not isinstance(r, dict):
            raise JudgeFormatError(f"verdict entry {k + 1} is not an object")
        idx = r.get("answer_index", k + 1)
        try:
            idx = int(idx)
        except (TypeError, ValueError):
            raise JudgeFormatError(f"verdict entry {k + 1}: bad answer_index {idx!r}") from None
        if not 1 <= idx <= n_answers:
            raise JudgeFormatError(f"answer_index {idx} out of range 1-{n_answers}")
        if out[idx - 1] is not None:
            raise JudgeFormatError(f"answer_index {idx} appears twice")
        j = r.get("judgement", r.get("judgements", r.get("judgment")))
        where = f"answer {idx}"
        if isinstance(j, dict):
            missing = [i for i in ids if i not in j]
            if missing:
                raise JudgeFormatError(f"{where}: no judgement for criteria {missing}")
            j = [j[i] for i in ids]
        if not isinstance(j, list):
            raise JudgeFormatError(f"{where}: judgement is not a list")
        if len(j) != len(ids):
            raise JudgeFormatError(f"{where}: {len(j)} judgements for {len(ids)} criteria")
        out[idx - 1] = [_as_bool(v, where) for v in j]
    return out  # type: ignore[return-value]


def parse_tjudge(text: str) -> float:
    """T-Judge: the holistic score in [0, 1] (a 0-10 scale is rescaled)."""
    data = extract_json(text)
    value = data.get("score") if isinstance(data, dict) else None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise JudgeFormatError(f"T-Judge output has no numeric 'score' (got {value!r})")
    if 1 < value <= 10:
        value = value / 10
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


@dataclass
class GroupResult:
    """What the judge made of one group: the rollouts' rewards and the record of how."""
    rewards: list[float]                       # one per rollout, in rollout order
    rubric: Rubric | None = None
    judgements: list[list[bool]] | None = None  # per rollout
    reference_scores: list[float] = field(default_factory=list)
    fallback: str | None = None                # why this group got reward 0 (failure policy), else None
    format_errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class JudgeSettings:
    """How the rubricator and the verifier are asked (defaults: the official code's)."""
    retries: int = 2                   # re-asks of an output that does not parse
    min_criteria: int = MIN_CRITERIA   # K, the rubric's size, is in [min, max]
    max_criteria: int = MAX_CRITERIA
    verifier_chunk: int | None = None  # answers per verifier call (None: the whole pool at once)
    rubricator_instructions: str = ""  # appended to the rubricator prompt
    verifier_instructions: str = ""    # appended to the verifier prompt


# complete(chats, stage, attempt, valid) -> one text (or an Exception) per chat; `valid(i, text)`
# says whether chat i's text parses (a caching backend should not keep the ones that do not)
CompleteFn = Callable[[list, str, int, Callable[[int, str], bool]], list]


def ask_judge(complete: CompleteFn, chats: dict, stage: str, retries: int, parse, errors: dict):
    """Send chats (key -> messages), parse each reply; re-ask only the failed ones, up to `retries`
    more times. Returns key -> parsed value for those that succeeded; errors[key] lists why not."""
    done, todo = {}, dict(chats)
    for attempt in range(retries + 1):
        if not todo:
            break
        keys = list(todo)

        def valid(i, text, keys=keys):
            try:
                parse(keys[i], text)
                return True
            except Exception:  # noqa: BLE001
                return False

        replies = complete([todo[k] for k in keys], stage, attempt, valid)
        for k, reply in zip(keys, replies):
            try:
                if isinstance(reply, Exception):
                    raise reply
                done[k] = parse(k, reply)
                del todo[k]
            except Exception as e:  # JudgeFormatError or a transport error after its own retries
                errors.setdefault(k, []).append(f"{stage}: {type(e).__name__}: {e}")
    return done


def induce_rubrics(complete: CompleteFn, groups: Sequence[Group], s: JudgeSettings,
                   errors: dict) -> dict[int, Rubric]:
    """Rubric induction (§2.2, Eq. 2): one rubricator call per group, which sees the question, the
    references and the rollouts - labelled as such, the contrast is the point - and writes one
    rubric shared by the whole group. Groups without references get none. Returns index -> rubric."""
    chats = {gi: rubricator_messages(g.question, g.references, g.rollouts, s.min_criteria,
                                     s.max_criteria, s.rubricator_instructions)
             for gi, g in enumerate(groups) if g.references}
    return ask_judge(complete, chats, "rubricator", s.retries,
                     lambda k, t: parse_rubric(t, s.min_criteria, s.max_criteria), errors)


def verify_blindly(complete: CompleteFn, groups: Sequence[Group], rubrics: dict[int, Rubric],
                   s: JudgeSettings, errors: dict) -> dict[int, list]:
    """Blind verification (§2.2, Eq. 3): each group's references and rollouts are shuffled into one
    pool (blind_pool) and graded against its rubric, criterion by criterion, in one verifier call
    (or `verifier_chunk` answers per call). The references stay in the pool: they anchor the scale
    across problem difficulties (§4.3). Returns index -> [((source, i), judgement), ...] in pool
    order, for the groups whose every verifier call parsed."""
    pools, chats = {}, {}
    for gi, rub in rubrics.items():
        g = groups[gi]
        answers, owners = blind_pool(g.prompt_id, g.references, g.rollouts)
        pools[gi] = (answers, owners)
        size = s.verifier_chunk or len(answers)
        for c, start in enumerate(range(0, len(answers), size)):
            chats[(gi, c)] = verifier_messages(g.question, rub, answers[start:start + size],
                                               s.verifier_instructions)

    def parse_chunk(key, text):
        gi, c = key
        size = s.verifier_chunk or len(pools[gi][0])
        return parse_verdicts(text, rubrics[gi], len(pools[gi][0][c * size:(c + 1) * size]))

    chunk_errors: dict = {}
    verdicts = ask_judge(complete, chats, "verifier", s.retries, parse_chunk, chunk_errors)
    graded = {}
    for gi, (_, owners) in pools.items():
        keys = [k for k in chats if k[0] == gi]
        errors.setdefault(gi, []).extend(e for k in keys for e in chunk_errors.get(k, []))
        if all(k in verdicts for k in keys):
            graded[gi] = list(zip(owners, [v for k in keys for v in verdicts[k]]))
    return graded


def weighted_pass_rates(group: Group, rubric: Rubric, graded: list) -> GroupResult:
    """Eq. 4: every pooled answer's weighted pass rate (see `score`), given back to its owner. The
    rollouts' scores are their rewards; the references' are only logged (how often a student beat
    every reference), never a reward."""
    res = GroupResult([0.0] * len(group.rollouts), rubric, [None] * len(group.rollouts),
                      [0.0] * len(group.references))
    for (src, i), judgement in graded:
        s = score(rubric, judgement)
        if src == "student":
            res.rewards[i], res.judgements[i] = s, judgement
        else:
            res.reference_scores[i] = s
    return res


def ropd_reward(complete: CompleteFn, groups: Sequence[Group],
                s: JudgeSettings = JudgeSettings()) -> list[GroupResult]:
    """The ROPD reward (§2.2, Eqs. 2-4) for a batch of groups: prompts, references and rollouts in;
    one reward per rollout and a record of what the judge did out. Needs only this module and a
    `complete` function that sends chats to the judge (CompleteFn).

    Each stage's calls go out as one batch (a concurrent backend runs them in parallel). A group
    without references, or whose rubric or verdicts are still invalid after `s.retries` re-asks,
    falls back: reward 0 for all its rollouts, so its advantage is 0 and it teaches nothing; the
    result says why (the caller counts fallbacks and stops the run above a rate)."""
    errors: dict = {}
    rubrics = induce_rubrics(complete, groups, s, errors)
    graded = verify_blindly(complete, groups, rubrics, s, errors)
    results = []
    for gi, g in enumerate(groups):
        if gi in graded:
            res = weighted_pass_rates(g, rubrics[gi], graded[gi])
        else:
            why = "no references" if not g.references else "verifier failed" if gi in rubrics else "rubricator failed"
            res = GroupResult([0.0] * len(g.rollouts), rubrics.get(gi), fallback=why)
        res.format_errors = errors.get(gi, [])
        results.append(res)
    return results


def tjudge_reward(complete: CompleteFn, groups: Sequence[Group],
                  s: JudgeSettings = JudgeSettings()) -> list[GroupResult]:
    """The T-Judge baseline (§3.1): the teacher scores each rollout holistically (no rubric, no
    references); the score is the reward. A group with any unscorable rollout falls back to 0."""
    chats = {(gi, j): tjudge_messages(g.question, t)
             for gi, g in enumerate(groups) for j, t in enumerate(g.rollouts)}
    errors: dict = {}
    scores = ask_judge(complete, chats, "tjudge", s.retries, lambda k, t: parse_tjudge(t), errors)
    results = []
    for gi, g in enumerate(groups):
        keys = [(gi, j) for j in range(len(g.rollouts))]
        ok = all(k in scores for k in keys)
        results.append(GroupResult(rewards=[scores[k] if ok else 0.0 for k in keys],
                                   fallback=None if ok else "tjudge failed",
                                   format_errors=[e for k in keys for e in errors.get(k, [])]))
    return results
