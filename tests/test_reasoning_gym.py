"""--data rg:TASKS: reasoning-gym's offline generators as training and evaluation data."""
import json

import pytest

import answers
import data
import ropd
from tests.test_ropd import tiny_args

rg = pytest.importorskip("reasoning_gym", reason="reasoning-gym is in requirements-dev.txt")


def test_rows_from_two_tasks_and_their_scorers():
    rows = data.load_data("rg:basic_arithmetic,chain_sum:5", seed=3)
    assert len(rows) == 10
    assert [r["rg"]["metadata"]["source_dataset"] for r in rows] == ["basic_arithmetic"] * 5 + ["chain_sum"] * 5
    assert rows == data.load_data("rg:basic_arithmetic,chain_sum:5", seed=3)  # reproducible
    held_out = data.load_data("rg:basic_arithmetic,chain_sum:5", seed=3, split="test")
    assert [r["prompt"] for r in held_out] != [r["prompt"] for r in rows]
    for r in rows:
        ans = r["answer"]
        assert answers.row_correct(f"We add and subtract in order.\nAnswer: {ans}", r)
        assert answers.row_correct(ans, r)
        assert answers.row_correct(f"so the result is \\boxed{{{ans}}}", r)
        assert not answers.row_correct(f"Answer: {int(ans) + 1}", r)
        assert not answers.row_correct("", r)
        # strict (training rewards): only an explicit answer is offered to the scorer, not the last line
        assert answers.row_correct(f"We add and subtract in order.\nAnswer: {ans}", r, strict=True)
        assert answers.row_correct(f"so the result is \\boxed{{{ans}}}", r, strict=True)
        assert not answers.row_correct(f"We add and subtract in order.\n{ans}", r, strict=True)
        assert not answers.row_correct(ans, r, strict=True)


@pytest.mark.parametrize("spec,msg", [("rg:no_such_task", "cannot make 'no_such_task'"),
                                      ("rg:chain_sum:ten", "N a number"), ("rg:", "no tasks")])
def test_bad_specs_are_one_line_errors(spec, msg, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ROPD_CACHE", str(tmp_path))  # an empty cache: the error must come before any build
    assert ropd.main(["--method", "grpo", "--data", spec, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1


def test_outcome_grpo_on_reasoning_gym(tiny_world, tmp_path):
    assert ropd.main(tiny_args(tiny_world, tmp_path, "--data", "rg:basic_arithmetic:30", method="grpo")) == 0
    ms = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in ms] == [1, 2]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert 0.0 <= summary["accuracy_before"] <= 1.0  # evaluated on 4 held-out reasoning-gym rows
    # the outcome reward is the task's scorer: the tiny student gets (nearly) nothing right
    assert all(0.0 <= m["reward_mean"] <= 1.0 for m in ms)
