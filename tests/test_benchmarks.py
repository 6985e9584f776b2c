"""HealthBench and IFEval (arXiv 2605.07396 §3.1, Table 2) on a few rows made here; values by hand."""
import json

import pytest

import eval as ev
import rubric
from data import UserError

ROWS = [
    {"prompt": [{"role": "user", "content": "I have a mild headache. What can I take?"}],
     "rubrics": [{"criterion": "Suggests paracetamol or ibuprofen", "points": 5},
                 {"criterion": "Advises seeing a doctor if it lasts over 3 days", "points": 3},
                 {"criterion": "Recommends a prescription opioid", "points": -4}]},
    {"prompt": "Is a fever of 38.5 C dangerous for an adult?",
     "rubrics": [{"criterion": "Says it is usually not dangerous", "points": 2},
                 {"criterion": "Claims it always needs the emergency room", "points": -6}]},
]


def _judge(verdicts, calls):
    """A judge that says a criterion is met when the criterion's text is in `verdicts`."""
    def complete(chats, stage, attempt, valid, tag=None):
        calls.append((stage, attempt, len(chats)))
        out = []
        for c in chats:
            crit = c[0]["content"].split("<criterion>\n")[1].split("\n</criterion>")[0]
            out.append("Reasoning first. " + json.dumps({"explanation": "x", "criteria_met": crit in verdicts}))
        return out
    return complete


def test_healthbench_score_is_met_points_over_positive_points_clipped():
    assert ev.healthbench_score([5, 3, -4], [True, False, False]) == pytest.approx(5 / 8)
    assert ev.healthbench_score([5, 3, -4], [True, True, True]) == pytest.approx((5 + 3 - 4) / 8)
    assert ev.healthbench_score([2, -6], [True, True]) == 0.0  # (2 - 6) / 2 < 0: clipped
    with pytest.raises(ValueError, match="positive points"):
        ev.healthbench_score([-1], [True])


def test_healthbench_grades_each_response_criterion_pair_with_one_judge_call():
    calls = []
    met = {"Suggests paracetamol or ibuprofen", "Recommends a prescription opioid",
           "Says it is usually not dangerous"}
    scores = ev.grade_healthbench(_judge(met, calls), ROWS, ["Take ibuprofen; or oxycodone.", "Usually fine."])
    assert scores == [pytest.approx((5 - 4) / 8), pytest.approx(2 / 2)]
    assert calls == [("healthbench", 0, 3 + 2)]  # one call per (response, criterion), no re-ask


def test_healthbench_reasks_an_unparsable_verdict_and_gives_none_when_it_stays_bad():
    calls = []

    def complete(chats, stage, attempt, valid, tag=None):
        calls.append(attempt)
        return ["no verdict" if attempt == 0 else json.dumps({"criteria_met": True}) for _ in chats]
    assert ev.grade_healthbench(complete, ROWS[1:], ["x"]) == [pytest.approx(0.0)]  # (2 - 6) / 2 -> 0
    assert calls == [0, 1]
    broken = ev.grade_healthbench(lambda chats, *a, **k: ["?"] * len(chats), ROWS[:1], ["x"], retries=1)
    assert broken == [None]
    with pytest.raises(rubric.JudgeFormatError):
        ev.parse_criteria_met('{"criteria_met": "yes"}')


IF_ROWS = [
    {"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase"],
     "kwargs": [{}, {}]},
    {"key": 2, "prompt": "p", "instruction_id_list": ["length_constraints:number_words", "keywords:existence",
                                                      "detectable_format:title"],
     "kwargs": [{"relation": "less than", "num_words": 6}, {"keywords": ["tea"]}, {}]},
    {"key": 3, "prompt": "p", "instruction_id_list": ["detectable_format:number_bullet_lists",
                                                      "detectable_format:json_format"],
     "kwargs": [{"num_bullets": 2}, {}]},
    {"key": 4, "prompt": "p", "instruction_id_list": ["language:response_language"], "kwargs": [{"language": "fr"}]},
]
IF_RESPONSES = [
    "all lower case and no commas here",        # both followed
    "<<Tea>> I like green tea a lot",          # 7 words (not < 6); 'tea' present; a title -> 2 of 3
    "* one\n* two\n* three",                   # 3 bullets, not 2; not JSON -> 0 of 2
    "bonjour",                                 # language: not implemented -> skipped
]


def test_ifeval_prompt_and_instruction_level_strict_accuracy_by_hand():
    res = ev.ifeval_accuracy(IF_ROWS, IF_RESPONSES)
    assert res["follows"] == [[True, True], [False, True, True], [False, False], None]
    assert res["prompt_strict"] == pytest.approx(1 / 3)
    assert res["instruction_strict"] == pytest.approx((2 + 2 + 0) / (2 + 3 + 2))
    assert (res["prompts"], res["skipped"]) == (3, 1)


@pytest.mark.parametrize("iid,kwargs,yes,no", [
    ("length_constraints:number_words", {"relation": "at least", "num_words": 3}, "one two three", "one two"),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "a\n***\nb", "a b"),
    ("keywords:forbidden_words", {"forbidden_words": ["bad"]}, "a badge", "a bad day"),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "at least"}, "Cat and cat", "one cat"),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "{a: 1}"),
    ("change_case:english_capital", {}, "ALL CAPS", "Not caps"),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. Any other questions?", "Any other questions? No."),
    ("startend:quotation", {}, '"quoted"', 'not "quoted"'),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi\nP.S. bye", "Hi, bye"),
])
def test_each_ifeval_check_on_a_followed_and_a_broken_response(iid, kwargs, yes, no):
    row = {"instruction_id_list": [iid], "kwargs": [kwargs]}
    assert ev.ifeval_follows(row, yes) == [True]
    assert ev.ifeval_follows(row, no) == [False]


def test_ifeval_without_an_implemented_row_is_one_clear_error():
    with pytest.raises(UserError, match="no IFEval row has only implemented instruction ids"):
        ev.ifeval_accuracy(IF_ROWS[3:], IF_RESPONSES[3:])


def test_eval_ifeval_runs_the_model_and_writes_the_accuracies(tmp_path, capsys):
    path = tmp_path / "ifeval.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in IF_ROWS[:2]) + "\n")
    out = tmp_path / "ifeval.json"
    assert ev.main(["ifeval", "--model", "toy", "--data", str(path), "--max-new-tokens", "8",
                    "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["prompts"] == 2 and len(res["follows"]) == 2
    assert res["prompt_strict"] == sum(all(f) for f in res["follows"]) / 2
    assert "IFEval: prompt-level strict" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p"}) + "\n")
    assert ev.main(["ifeval", "--model", "toy", "--data", str(bad)]) == 2
    assert "row 1 lacks one of prompt, instruction_id_list" in capsys.readouterr().err
