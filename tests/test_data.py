"""data.py: the benchmark files researchers have (AIME, HMMT, MATH-500, GPQA-Diamond field names)."""
import json

import pytest

import data


def _write(tmp_path, *objs):
    p = tmp_path / "bench.jsonl"
    p.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return str(p)


def test_aime_hmmt_and_math500_lines(tmp_path):
    rows = data.load_jsonl(_write(
        tmp_path,
        {"id": "2024-I-1", "problem": "Find $n$.", "answer": 204},                        # AIME (answer an int)
        {"problem": "Compute $x$.", "answer": "\\frac{\\sqrt{3}}{2}"},                     # HMMT
        {"problem": "What is 1+1?", "solution": "So $1+1=\\boxed{2}$.", "answer": "2"},    # MATH-500
        {"Problem": "What is 2+2?", "Solution": "We get \\boxed{4}, done."},              # capitals, no answer
        {"question": "Q?", "Answer": "7"}))
    assert [(r["id"], r["prompt"], r["answer"]) for r in rows] == [
        ("2024-I-1", "Find $n$.", "204"), ("2", "Compute $x$.", "\\frac{\\sqrt{3}}{2}"),
        ("3", "What is 1+1?", "2"), ("4", "What is 2+2?", "4"), ("5", "Q?", "7")]


GPQA = {"Question": "Which particle is a lepton?", "Correct Answer": "electron",
        "Incorrect Answer 1": "proton", "Incorrect Answer 2": "neutron", "Incorrect Answer 3": "pion"}


def test_gpqa_options_are_shuffled_into_lettered_choices_with_a_fixed_seed(tmp_path):
    rows = data.load_jsonl(_write(tmp_path, GPQA, dict(GPQA, Question="Which is a boson?", **{"Correct Answer": "photon"})))
    again = data.load_jsonl(_write(tmp_path, GPQA, dict(GPQA, Question="Which is a boson?", **{"Correct Answer": "photon"})))
    assert rows == again  # the same order every run
    for r, right in zip(rows, ("electron", "photon")):
        lines = r["prompt"].splitlines()
        options = {ln[1]: ln[4:] for ln in lines if ln[:1] == "(" and ln[2:4] == ") "}
        assert sorted(options) == ["A", "B", "C", "D"]
        assert sorted(options.values()) == sorted([right, "proton", "neutron", "pion"])
        assert options[r["answer"]] == right  # the gold letter is where the right option went
        assert r["prompt"].endswith("Answer with the letter of the right option.")
    positions = {data.gpqa_row(dict(GPQA, Question=f"q{i}"))[1] for i in range(40)}
    assert len(positions) == 4  # shuffled: the right option is not always A


def test_bad_lines_are_named(tmp_path):
    with pytest.raises(data.UserError, match=r"bench.jsonl:2: no prompt"):
        data.load_jsonl(_write(tmp_path, {"problem": "x", "answer": 1}, {"text": "y"}))


def test_each_epoch_has_its_own_order_and_the_position_says_where():
    """The order is a permutation per (seed, epoch): epochs differ, a seed repeats, and next_batch
    from a saved position continues exactly where an unbroken run would be."""
    orders = [data.batch_order(20, 0, e) for e in range(3)]
    assert all(sorted(o) == list(range(20)) for o in orders)
    assert orders[0] != orders[1] != orders[2] and orders[0] == data.batch_order(20, 0, 0)
    assert data.batch_order(20, 1, 0) != orders[0]
    rows = [{"i": i} for i in range(20)]
    whole, pos = data.next_batch(rows, 0, size=50, seed=0)
    first, mid = data.next_batch(rows, 0, size=27, seed=0)
    rest, end = data.next_batch(rows, mid, size=23, seed=0)
    assert (mid, end, pos) == (27, 50, 50) and first + rest == whole
    assert [r["i"] for r in whole[20:40]] == orders[1]
