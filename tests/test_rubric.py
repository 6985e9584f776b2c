"""rubric.py: tolerant parsing of realistic judge outputs in the official (and App. D) schemas,
blind pooling, weighted scores, and the whole ROPD reward path through the toy judge, for every
prompt variant and Table 6 ablation."""
import json

import pytest

import answers
import prompts
import rubric
import toy
from rubric import Criterion, JudgeFormatError, Rubric

TASK, SEEN = prompts.CATEGORIES[0], prompts.CATEGORIES[1]
RUBRIC = Rubric((Criterion("c1", SEEN, "has 7+5=12", 2),
                 Criterion("c2", SEEN, "has 12*3=36", 4),
                 Criterion("c3", TASK, "final line Answer: 32", 5),
                 Criterion("c4", TASK, "ends with Answer: N", 1)))

GOOD_RUBRIC = {"schema_version": "ropd.rubric.v1", "rubrics": [
    {"criterion_id": "c1", "category": SEEN, "criterion": "has 7+5=12", "points": 2},
    {"criterion_id": "c2", "category": SEEN, "criterion": "has 12*3=36", "points": 4},
    {"criterion_id": "c3", "category": TASK, "criterion": "final line Answer: 32", "points": 5},
    {"criterion_id": "c4", "category": TASK, "criterion": "ends with Answer: N", "points": 1}],
    "maximum_score": 12}
GOOD_JSON = json.dumps(GOOD_RUBRIC, indent=2)
C = GOOD_RUBRIC["rubrics"]


# ---------------------------------------------------------------- rubric outputs that get repaired

REPAIRABLE_RUBRICS = {
    "official, as is": GOOD_JSON,
    "code fence": "```json\n" + GOOD_JSON + "\n```",
    "prose around": "Here is the rubric you asked for:\n" + GOOD_JSON + "\nLet me know if you need changes.",
    "trailing commas": GOOD_JSON.replace('"points": 1}', '"points": 1},').replace('"maximum_score": 12', '"maximum_score": 12,'),
    "fenced, prose and trailing commas": "Sure.\n```json\n" + GOOD_JSON.replace('"points": 1}', '"points": 1},') + "\n```\nDone.",
    "points as strings": GOOD_JSON.replace('"points": 5', '"points": "5"').replace('"points": 2', '"points": 2.0'),
    "wrong maximum_score": GOOD_JSON.replace('"maximum_score": 12', '"maximum_score": 15'),
    "bare criteria list": json.dumps(C),
    "reasoning before": "<think>I need {criteria} that separate [answers]...</think>\n" + GOOD_JSON,
    "line comments": GOOD_JSON.replace('"points": 4}', '"points": 4} // the key gap'),
    "fence without language, text after": "```\n" + GOOD_JSON + "\n```\nNote: c2 is the bottleneck.",
    "missing ids": json.dumps({"rubrics": [{k: v for k, v in c.items() if k != "criterion_id"} for c in C]}),
    "older key 'criteria'": json.dumps({"criteria": C}),
    # regression: the first bracket that parsed used to win, so this gave [1] and fell back
    "bracketed prose before": "Grading answers [1] and [2] against {the question}: " + GOOD_JSON,
}


@pytest.mark.parametrize("name", sorted(REPAIRABLE_RUBRICS))
def test_rubric_outputs_that_are_repaired(name):
    r = rubric.parse_rubric(REPAIRABLE_RUBRICS[name])
    assert [c.points for c in r.criteria] == [2, 4, 5, 1]
    assert [c.id for c in r.criteria] == ["c1", "c2", "c3", "c4"]
    assert r.criteria[2].text == "final line Answer: 32" and r.criteria[2].category == TASK
    assert r.maximum_score == 12  # recomputed, whatever the judge said
    assert r.to_json() == GOOD_RUBRIC  # the official schema, exactly


def test_paper_rubric_schema_is_parsed():
    paper = {"schema_version": "black_opd.rubric.v1", "question_domain": "number theory",
             "rubrics": [dict(criterion_id=c["criterion_id"], category="Task Completion", criterion=c["criterion"],
                              weight=c["points"]) for c in C],
             "K": 5, "max_weighted_sum": 99, "estimated_student_pass_rate": 0.3}
    r = rubric.parse_rubric(json.dumps(paper), variant="paper")
    assert [c.points for c in r.criteria] == [2, 4, 5, 1] and r.maximum_score == 12  # K, sum recomputed
    assert r.question_domain == "number theory" and r.estimated_student_pass_rate == 0.3
    with pytest.raises(JudgeFormatError, match="schema_version 'black_opd.rubric.v1'; expected 'ropd.rubric.v1'"):
        rubric.parse_rubric(json.dumps(paper))


def _with(criteria, **extra):
    return json.dumps({"schema_version": "ropd.rubric.v1", "rubrics": criteria, **extra})


REJECTED_RUBRICS = {
    "no json": ("I cannot produce a rubric for this question.", "contains no JSON"),
    "empty": ("   ", "empty judge output"),
    "truncated": (GOOD_JSON[:200], "truncated"),
    "too few criteria": (_with(C[:2]), "2 criteria; expected 4-12"),
    "too many criteria": (_with([dict(c, criterion_id=f"x{i}") for i in range(4) for c in C]), "16 criteria; expected 4-12"),
    "points zero": (_with([C[0], C[1], C[2], dict(C[3], points=0)]), "points must be an integer 1-5, got 0"),
    "points seven": (_with([dict(C[0], points=7), C[1], C[2], C[3]]), "points must be an integer 1-5, got 7"),
    "fractional points": (_with([dict(C[0], points=2.5), C[1], C[2], C[3]]), "got 2.5"),
    "boolean points": (_with([dict(C[0], points=True), C[1], C[2], C[3]]), "got True"),
    "duplicate ids": (_with([C[0], dict(C[1], criterion_id="c1"), C[2], C[3]]), "duplicate criterion id 'c1'"),
    "empty criterion": (_with([C[0], dict(C[1], criterion="  "), C[2], C[3]]), "criterion 2 (c2) has no criterion text"),
    "no rubrics key": (json.dumps({"rubric_items": C}), "no 'rubrics' list"),
    "criterion not object": (_with([C[0], "has 12*3=36", C[2], C[3]]), "criterion 2 is not an object"),
    "another schema": (_with(C, schema_version="ropd.rubric.v2"), "schema_version 'ropd.rubric.v2'; expected 'ropd.rubric.v1'"),
}


@pytest.mark.parametrize("name", sorted(REJECTED_RUBRICS))
def test_rubric_outputs_that_are_rejected(name):
    text, message = REJECTED_RUBRICS[name]
    with pytest.raises(JudgeFormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        rubric.parse_rubric(text)


def test_criterion_bounds_are_configurable():
    assert len(rubric.parse_rubric(_with(C[:2]), min_criteria=2).criteria) == 2
    with pytest.raises(JudgeFormatError, match="expected 5-12"):
        rubric.parse_rubric(GOOD_JSON, min_criteria=5)


# ---------------------------------------------------------------- verdict outputs

def _verdicts(results, **extra):
    return json.dumps({"schema_version": "ropd.batch_verifier.v2", "answers": results, **extra})


V = [{"answer_index": 1, "judgement": [True, True, True, True], "final_score": 12},
     {"answer_index": 2, "judgement": [True, False, False, True], "final_score": 3},
     {"answer_index": 3, "judgement": [False, False, False, False], "final_score": 0}]
EXPECTED = [[True] * 4, [True, False, False, True], [False] * 4]

REPAIRABLE_VERDICTS = {
    "official, as is": _verdicts(V),
    "fenced": "```json\n" + _verdicts(V) + "\n```",
    "fenced, prose and trailing commas": "Here are the grades.\n```json\n" + _verdicts(V)[:-2] + ",]}\n```\nAll done.",
    "out of order": _verdicts([V[2], V[0], V[1]]),
    "python booleans": _verdicts(V).replace("true", "True").replace("false", "False"),
    "yes/no strings": _verdicts([dict(v, judgement=["yes" if b else "no" for b in v["judgement"]]) for v in V]),
    "dict judgements": _verdicts([dict(v, judgement={f"c{i + 1}": b for i, b in enumerate(v["judgement"])}) for v in V]),
    "bare list, no indices": json.dumps([{"judgement": v["judgement"]} for v in V]),
    "wrong final_score ignored": _verdicts([dict(v, final_score=99) for v in V]),
    "trailing comma + prose": "Grades:\n" + _verdicts(V)[:-2] + ",]}\nDone.",
    "older key 'results'": json.dumps({"results": V}),
    "bracketed prose before": "Scores for answers [1], [2] and [3]: " + _verdicts(V),
}


@pytest.mark.parametrize("name", sorted(REPAIRABLE_VERDICTS))
def test_verdict_outputs_that_are_repaired(name):
    assert rubric.parse_verdicts(REPAIRABLE_VERDICTS[name], RUBRIC, 3) == EXPECTED


REJECTED_VERDICTS = {
    "missing answer": (_verdicts(V[:2]), "verdict has 2 answers; expected 3"),
    "short judgement": (_verdicts([V[0], dict(V[1], judgement=[True, False]), V[2]]), "answer 2: 2 judgements for 4 criteria"),
    "duplicate index": (_verdicts([V[0], V[0], V[2]]), "answer_index 1 appears twice"),
    "index out of range": (_verdicts([V[0], V[1], dict(V[2], answer_index=7)]), "answer_index 7 out of range 1-3"),
    "non-boolean": (_verdicts([V[0], V[1], dict(V[2], judgement=[True, "maybe", False, False])]), "must be true/false, got 'maybe'"),
    "dict missing id": (_verdicts([V[0], V[1], dict(V[2], judgement={"c1": True})]), r"no judgement for criteria \['c2', 'c3', 'c4'\]"),
    "no answers": (json.dumps({"scores": [1, 2, 3]}), "no 'answers' list"),
    "prose only": ("All answers look fine to me.", "contains no JSON"),
    "another schema": (_verdicts(V, schema_version="ropd.batch_verifier.v1"), "expected 'ropd.batch_verifier.v2'"),
}


@pytest.mark.parametrize("name", sorted(REJECTED_VERDICTS))
def test_verdict_outputs_that_are_rejected(name):
    text, message = REJECTED_VERDICTS[name]
    with pytest.raises(JudgeFormatError, match=message):
        rubric.parse_verdicts(text, RUBRIC, 3)


def test_per_response_verdicts():
    out = {"schema_version": "black_opd.verifier.v1", "judgements": [True, False, True, False],
           "weighted_score": 99, "pass_rate": 0.99}
    assert rubric.parse_single_verdict("Verdict:\n" + json.dumps(out), RUBRIC) == [True, False, True, False]
    with pytest.raises(JudgeFormatError, match="3 judgements for 4 criteria"):
        rubric.parse_single_verdict(json.dumps(dict(out, judgements=[True] * 3)), RUBRIC)


def test_score_is_weighted_pass_rate_recomputed_from_booleans():
    assert rubric.score(RUBRIC, [True, False, True, True]) == pytest.approx((2 + 5 + 1) / 12)
    assert rubric.score(RUBRIC, [False] * 4) == 0.0 and rubric.score(RUBRIC, [True] * 4) == 1.0
    with pytest.raises(ValueError):
        rubric.score(RUBRIC, [True])


def test_holistic_scores_keep_their_scale():
    tj = prompts.TJUDGE_SCHEMA
    assert rubric.parse_score('{"score": 0.7}', tj) == 0.7
    assert rubric.parse_score('Score: ```json\n{"schema_version": "ropd.tjudge.v1", "score": "0.25"}\n```', tj) == 0.25
    # regression: 1 used to mean 1.0 but 2 was read as 2/10 = 0.2; a score off [0, 1] is refused
    assert rubric.parse_score('{"score": 1}', tj) == 1.0
    for bad in ('{"score": 2}', '{"score": 7}', '{"score": 42}', '{"score": -0.1}'):
        with pytest.raises(JudgeFormatError, match="outside"):
            rubric.parse_score(bad, tj)
    with pytest.raises(JudgeFormatError, match="numeric"):
        rubric.parse_score('{"verdict": "good"}', tj)
    ovd = prompts.OVD_SCHEMA
    assert rubric.parse_score('{"schema_version": "ropd.ovd.v1", "score": 9}', ovd) == 1.0
    assert rubric.parse_score('{"score": "3"}', ovd) == pytest.approx(3 / 9)
    for bad in ('{"score": 10}', '{"score": 4.5}', '{"score": -1}'):
        with pytest.raises(JudgeFormatError, match="not an integer from 0 to 9"):
            rubric.parse_score(bad, ovd)


# ---------------------------------------------------------------- pooling

def test_blind_pool_is_deterministic_shuffled_and_restorable():
    refs, studs = ["r0", "r1", "r2", "r3"], [f"s{i}" for i in range(8)]
    a1, o1 = rubric.blind_pool("p1", refs, studs)
    a2, o2 = rubric.blind_pool("p1", refs, studs)
    a3, _ = rubric.blind_pool("p2", refs, studs)
    assert (a1, o1) == (a2, o2) and a1 != a3
    assert sorted(a1) == sorted(refs + studs)
    assert a1 != refs + studs  # actually shuffled
    for text, (src, i) in zip(a1, o1):
        assert text == (refs if src == "reference" else studs)[i]


def test_dedupe_references():
    assert rubric.dedupe(["a", "b", "a", "c", "b"]) == ["a", "b", "c"]


# ---------------------------------------------------------------- steps 4-6 through the toy judge

def _toy_complete(log, sent=None):
    def complete(chats, stage, attempt, valid, tag=None):
        log.append((stage, attempt, len(chats)))
        if sent is not None:
            sent.extend((stage, tag, c) for c in chats)
        assert all(valid(i, toy.toy_judge(c)) for i, c in enumerate(chats))
        return [toy.toy_judge(c) for c in chats]
    return complete


def test_ropd_reward_rewards_follow_their_rollouts():
    probs = toy.make_problems(3, seed=4)
    groups = []
    for k, p in enumerate(probs):
        wrong_final = p.solution.rsplit("Answer:", 1)[0] + f"Answer: {p.answer + 1}"
        groups.append(rubric.Group(f"p{k}", p.question, [p.solution] * 2,
                                   [p.solution, wrong_final, "no idea", p.solution]))
    calls = []
    res = rubric.ropd_reward(_toy_complete(calls), groups)
    assert calls == [("rubricator", 0, 3), ("verifier", 0, 3)]  # one batched call per stage
    for r in res:
        assert r.fallback is None and r.reference_scores == [1.0]  # the duplicate reference is dropped
        assert r.rewards[0] == r.rewards[3] == 1.0
        assert 0.0 < r.rewards[1] < 1.0 and r.rewards[2] == 0.0
        assert r.rewards[1] == pytest.approx(rubric.score(r.rubric, r.judgements[1]))
    chunked = rubric.ropd_reward(_toy_complete([]), groups, rubric.JudgeSettings(verifier_chunk=4))
    assert [r.rewards for r in chunked] == [r.rewards for r in res]


def test_toy_judge_prefers_worked_solutions_to_wrong_answers():
    probs = toy.make_problems(30, seed=9)
    groups, right, wrong = [], [], []
    for k, p in enumerate(probs):
        bad_step = p.solution.replace(f"={p.steps[0][3]}\n", f"={p.steps[0][3] + 3}\n", 1)
        bad_final = p.solution.rsplit("Answer:", 1)[0] + f"Answer: {p.answer + 2}"
        groups.append(rubric.Group(f"q{k}", p.question, [p.solution] * 4,
                                   [p.solution, bad_step, bad_final, "Answer:"]))
    for r in rubric.ropd_reward(_toy_complete([]), groups):
        right.append(r.rewards[0])
        wrong += r.rewards[1:]
    assert sum(right) / len(right) == 1.0
    assert sum(wrong) / len(wrong) < 0.6


def test_toy_rubric_rewards_showing_the_work():
    """The premise of the default run: a right answer given without its steps (the toy student's
    shortcut) scores below the worked solution, and exactly the answer criteria's share."""
    probs = toy.make_problems(20, seed=5)
    groups = [rubric.Group(f"s{k}", p.question, [p.solution] * 2, [p.solution, p.shortcut_solution])
              for k, p in enumerate(probs)]
    for p, r in zip(probs, rubric.ropd_reward(_toy_complete([]), groups)):
        assert answers.is_correct(p.shortcut_solution, str(p.answer))
        assert r.rewards[0] == 1.0
        assert r.rewards[1] == pytest.approx(6 / r.rubric.maximum_score)  # final line 5 + format 1
        assert r.rewards[1] < 0.6


def test_ropd_reward_fallbacks_and_retries():
    p = toy.make_problems(1, seed=1)[0]
    groups = [rubric.Group("a", p.question, [p.solution], ["x", "y"]),
              rubric.Group("b", p.question, [], ["x", "y"])]
    calls = []

    def garbage(chats, stage, attempt, valid, tag=None):
        assert not valid(0, "I refuse.")
        calls.append((stage, attempt))
        return ["I refuse."] * len(chats)

    res = rubric.ropd_reward(garbage, groups, rubric.JudgeSettings(retries=2))
    assert calls == [("rubricator", 0), ("rubricator", 1), ("rubricator", 2)]
    assert res[0].fallback == "rubricator failed" and res[0].rewards == [0.0, 0.0]
    assert len(res[0].format_errors) == 3 and "contains no JSON" in res[0].format_errors[0]
    assert res[1].fallback == "no references"

    # a verifier that succeeds only on its second attempt: retried, not a fallback
    def flaky(chats, stage, attempt, valid, tag=None):
        if stage == "verifier" and attempt == 0:
            return [RuntimeError("HTTP 500")] * len(chats)
        return [toy.toy_judge(c) for c in chats]

    res = rubric.ropd_reward(flaky, groups[:1], rubric.JudgeSettings(retries=1))
    assert res[0].fallback is None and res[0].format_errors == ["verifier: RuntimeError: HTTP 500"]


# ---------------------------------------------------------------- App. D variants and Table 6 ablations

def _groups(n=2, G=3, K=2, seed=6):
    out = []
    for k, p in enumerate(toy.make_problems(n, seed=seed)):
        wrong = p.solution.rsplit("Answer:", 1)[0] + f"Answer: {p.answer + 1}"
        out.append(rubric.Group(f"v{k}", p.question, [p.solution] * K, ([p.solution, wrong, p.shortcut_solution] * G)[:G]))
    return out


def _run(**settings):
    calls, sent = [], []
    res = rubric.ropd_reward(_toy_complete(calls, sent), _groups(), rubric.JudgeSettings(**settings))
    return res, calls, sent


def test_default_is_one_shared_rubric_and_one_blind_verifier_call_per_group():
    res, calls, sent = _run()
    assert calls == [("rubricator", 0, 2), ("verifier", 0, 2)]
    assert {tag for _, tag, _ in sent} == {prompts.RUBRIC_SCHEMA, prompts.VERDICT_SCHEMA}
    verifier = [c for stage, _, c in sent if stage == "verifier"]
    assert all(len(toy._blocks(c[1]["content"])["answer"]) == 1 + 3 for c in verifier)  # K (deduped) + G
    assert all(r.fallback is None and len(r.rubrics) == 1 for r in res)
    assert [r.rewards[0] for r in res] == [1.0, 1.0]


def test_per_rollout_rubrics_make_g_rubricator_calls_per_prompt():
    res, calls, sent = _run(per_rollout_rubrics=True)
    assert calls == [("rubricator", 0, 2 * 3), ("verifier", 0, 2 * 3)]
    rubricator = [c for stage, _, c in sent if stage == "rubricator"]
    assert all(len(toy._blocks(c[1]["content"])["student"]) == 1 for c in rubricator)
    shared, _, _ = _run()
    for r, base in zip(res, shared):
        assert len(r.rubrics) == 3 and r.rubric is None and r.fallback is None
        assert r.rewards[0] == 1.0 and r.rewards[1] < 1.0  # each rollout graded against its own rubric
        assert r.reference_scores == [1.0]


def test_sighted_verifier_labels_the_teachers_answers():
    res, _, sent = _run(sighted_verifier=True)
    for stage, _, chat in sent:
        if stage == "verifier":
            user = chat[1]["content"]
            assert user.count('author="reference"') == 1 and user.count('author="student"') == 3
            assert prompts.SIGHTED in chat[0]["content"]
    blind, _, sent_blind = _run()
    assert not any("author=" in c[1]["content"] for s_, _, c in sent_blind)
    assert [r.rewards for r in res] == [r.rewards for r in blind]  # the toy judge is not swayed by labels


def test_reference_free_pool_holds_the_g_rollouts_alone():
    res, _, sent = _run(pool_references=False)
    for stage, _, chat in sent:
        if stage == "verifier":
            assert len(toy._blocks(chat[1]["content"])["answer"]) == 3
    assert all(r.reference_scores == [] and r.fallback is None for r in res)


def test_per_response_verifier_makes_one_call_per_answer():
    res, calls, sent = _run(verifier="per-response")
    assert calls == [("rubricator", 0, 2), ("verifier", 0, 2 * (1 + 3))]
    assert {tag for stage, tag, _ in sent if stage == "verifier"} == {prompts.PAPER_VERDICT_SCHEMA}
    batch, _, _ = _run()
    assert [r.rewards for r in res] == [r.rewards for r in batch]


def test_paper_rubricator_runs_end_to_end():
    res, _, sent = _run(rubric_prompt="paper")
    assert {tag for stage, tag, _ in sent if stage == "rubricator"} == {prompts.PAPER_RUBRIC_SCHEMA}
    assert all(r.rubric.question_domain == "arithmetic" and r.rubric.estimated_student_pass_rate < 0.5
               for r in res)
    assert [r.rewards[0] for r in res] == [1.0, 1.0]


def test_a_group_with_fewer_than_m_references_falls_back():
    groups = _groups(K=2)
    groups[1].references = groups[1].references[:1]
    res = rubric.ropd_reward(_toy_complete([]), groups, rubric.JudgeSettings(min_references=2))
    assert res[0].fallback is None and res[1].fallback == "too few references (1 < 2)"
    assert res[1].rewards == [0.0] * 3


def test_by_default_a_group_needs_every_reference_it_was_given():
    """The standalone default is the run's (--min-references 0: K): a group whose K-th reference
    failed falls back, as it does in training; min_references=1 accepts it."""
    groups = _groups(K=2)
    groups[1].references = groups[1].references[:1]
    groups[1].reference_errors = ["reference: RequestError('timed out')"]
    res = rubric.ropd_reward(_toy_complete([]), groups, settings=rubric.JudgeSettings())
    assert res[0].fallback is None and res[1].fallback == "too few references (1 < 2)"
    lenient = rubric.ropd_reward(_toy_complete([]), groups, settings=rubric.JudgeSettings(min_references=1))
    assert lenient[1].fallback is None


@pytest.mark.parametrize("extra", [-1, 1])
def test_a_complete_with_the_wrong_number_of_replies_is_named(extra):
    """A `complete` that returns fewer (or more) replies than chats is a bug in it: the groups fall
    back and their errors say what it did, instead of a silent 'rubricator failed'."""
    def complete(chats, stage, attempt, valid, tag=None):
        replies = [toy.toy_judge(c) for c in chats]
        return replies[:extra] if extra < 0 else replies + replies[:extra]
    res = rubric.ropd_reward(complete, _groups(), settings=rubric.JudgeSettings(retries=1))
    n = len(_groups())
    for r in res:
        assert r.fallback == "rubricator failed"
        assert f"rubricator: complete returned {n + extra} replies for {n} chats" in r.format_errors
