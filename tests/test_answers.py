"""answers.py: answer extraction and comparison on the shapes real models write, pass@k and its
bootstrap interval by hand."""
from itertools import combinations

import numpy as np
import pytest

import answers

# (model output, reference answer, is it right?) - the shapes real models write
ANSWERS = [
    ("7+5=12\n12*3=36\nAnswer: 36", "36", True),
    ("7+5=12\n12*3=36\nAnswer: 35", "36", False),
    ("The area is \\boxed{12}.", "12", True),
    ("so $x = \\boxed{\\frac{1}{2}}$", "0.5", True),
    ("\\boxed{\\dfrac{3}{4}}", "3/4", True),
    ("\\boxed{\\frac{3}{4}}", "0.7", False),
    ("the answer is \\boxed{\\left( 2, 3 \\right)}", "(2,3)", True),
    ("\\boxed{\\text{(B)}}", "(B)", True),
    ("first \\boxed{5} then, correcting myself, \\boxed{6}", "6", True),
    ("\\boxed{{1,000}}", "1000", True),
    ("The total is 1,000 dollars.", "1000", True),
    ("The total is $1,234,567.", "1234567", True),
    ("Answer: 1,000", "1000.0", True),
    ("**Final Answer:** 42", "42", True),
    ("The final answer is 42.", "42", True),
    ("The answer is -7", "-7", True),
    ("The answer is \u22127", "-7", True),
    ("Answer: 50\\%", "50", True),
    ("Answer: 90^\\circ", "90", True),
    ("Answer: x = 5", "5", True),
    ("Answer: \\frac12", "1/2", True),
    ("Answer: -\\frac{3}{4}", "-0.75", True),
    ("Answer: 2.50", "2.5", True),
    ("Answer: 1e3", "1000", True),
    ("We get 3 apples, then 4 more, so 7", "7", True),
    ("We get 3 apples, then 4 more, so 7", "4", False),
    ("no number here", "3", False),
    ("", "3", False),
    ("\\boxed{12", "12", True),                # truncated box: not an answer, but 12 is the last number
    ("Answer: \\text{Paris}", "paris", True),
    ("Answer: Paris", "London", False),
    ("I think the answer is (C).", "C", True),
    ("Answer: B) because the others fail", "B", True),
    ("Options (A) and (B) fail, so (D)", "D", True),
    ("\\boxed{A}", "A", True),
    ("The answer is C", "B", False),
    ("Answer: 0.333", "1/3", False),           # exact comparison: a rounded decimal is not 1/3
    ("Answer: 07", "7", True),
    # SmolLM2's wordier forms (was: "to this problem is 2894" was taken for the answer)
    ("The answer to this problem is 2894", "2894", True),
    ("So the answer to the problem is 12.", "12", True),
    ("The final answer to this question: 42", "42", True),
    ("The answer to 3+4 is 8", "7", False),
]


@pytest.mark.parametrize("text,gold,right", ANSWERS)
def test_is_correct_on_realistic_answers(text, gold, right):
    assert answers.is_correct(text, gold) is right


def test_last_boxed_nested_and_extraction_order():
    assert answers.last_boxed("x \\boxed{\\frac{a}{b^{2}}} y") == "\\frac{a}{b^{2}}"
    assert answers.last_boxed("no box") is None
    # a boxed answer wins over a later 'Answer:' line, which wins over a later number
    assert answers.extract_answer("\\boxed{3}\nAnswer: 4") == "3"
    assert answers.extract_answer("Answer: 4\nchecked with 5 examples") == "4"
    assert answers.extract_answer("1 2 3") == "3"


@pytest.mark.parametrize("s,value", [("1,000", 1000), ("0.5", 0.5), ("\\frac{1}{2}", 0.5), ("1/2", 0.5),
                                     ("-\\frac{3}{4}", -0.75), ("\\frac12", 0.5), (".25", 0.25), ("2.5e3", 2500)])
def test_parse_number(s, value):
    assert float(answers.parse_number(s)) == value


@pytest.mark.parametrize("s", ["1,00", "abc", "1/0", "\\frac{1}{0}", "(2,3)"])
def test_parse_number_rejects(s):
    assert answers.parse_number(s) is None


def _pass_at_k_by_enumeration(n, c, k):
    """The probability that k samples drawn without replacement from n (c right) include a right one."""
    draws = list(combinations([1] * c + [0] * (n - c), k))
    return sum(any(d) for d in draws) / len(draws)


@pytest.mark.parametrize("n,c,k", [(5, 2, 1), (5, 2, 2), (5, 2, 3), (5, 2, 4), (5, 2, 5), (6, 0, 3),
                                   (6, 6, 1), (4, 1, 4), (8, 3, 2), (7, 5, 3)])
def test_pass_at_k_matches_enumeration(n, c, k):
    assert answers.pass_at_k(n, c, k) == pytest.approx(_pass_at_k_by_enumeration(n, c, k), abs=1e-12)


def test_pass_at_k_hand_values_and_edges():
    assert answers.pass_at_k(5, 2, 1) == pytest.approx(0.4)          # c / n
    assert answers.pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)   # 1 - C(3,2)/C(5,2)
    assert answers.pass_at_k(16, 0, 16) == 0.0                       # c = 0: never
    assert answers.pass_at_k(16, 1, 16) == 1.0                       # k = n: any right sample counts
    assert answers.pass_at_k(1000, 1, 1) == pytest.approx(0.001)     # large n, no overflow
    with pytest.raises(ValueError):
        answers.pass_at_k(4, 1, 5)


# ----------------------------------------------------------------------------------------------
# bootstrap_ci
# ----------------------------------------------------------------------------------------------

def _bootstrap_by_loop(correct, k, over, n_boot, alpha, seed):
    """bootstrap_ci written out with lists: the same Generator draws, pass@k by enumeration, and the
    quantiles by linear interpolation between the sorted scores."""
    rng = np.random.default_rng(seed)
    problems, n = len(correct), len(correct[0])
    scores = []
    for _ in range(n_boot):
        if over == "problems":
            rows = [correct[i] for i in rng.integers(0, problems, problems)]
        else:
            picks = rng.integers(0, n, (problems, n))
            rows = [[correct[p][j] for j in picks[p]] for p in range(problems)]
        per_problem = [sum(r) / n if k is None else _pass_at_k_by_enumeration(n, sum(r), k) for r in rows]
        scores.append(sum(per_problem) / problems)
    scores.sort()

    def quantile(q):
        pos = q * (len(scores) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(scores) - 1)
        return scores[lo] + (scores[hi] - scores[lo]) * (pos - lo)
    return quantile(alpha / 2), quantile(1 - alpha / 2)


SMALL = [[1, 0, 0, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 0], [0, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 0, 0]]


@pytest.mark.parametrize("k", [None, 1, 2, 5])
@pytest.mark.parametrize("over", ["problems", "samples"])
def test_bootstrap_ci_matches_a_plain_loop(k, over):
    got = answers.bootstrap_ci(np.array(SMALL), k=k, over=over, n_boot=300, alpha=0.1, seed=3)
    assert got == pytest.approx(_bootstrap_by_loop(SMALL, k, over, 300, 0.1, 3), abs=1e-12)


def test_bootstrap_ci_hand_cases():
    ones, zeros = np.ones((7, 4)), np.zeros((7, 4))
    for over in ("problems", "samples"):
        assert answers.bootstrap_ci(ones, over=over) == (1.0, 1.0)
        assert answers.bootstrap_ci(ones, k=2, over=over) == (1.0, 1.0)
        assert answers.bootstrap_ci(zeros, k=4, over=over) == (0.0, 0.0)
    # every problem all right or all wrong: resampling its samples changes nothing
    split = np.array([[1, 1, 1], [0, 0, 0], [1, 1, 1], [1, 1, 1]])
    assert answers.bootstrap_ci(split, over="samples") == pytest.approx((0.75, 0.75))
    # identical problems: resampling problems changes nothing (pass@2 of 1 right in 4 is 1/2)
    same = np.array([[1, 0, 0, 0]] * 5)
    assert answers.bootstrap_ci(same, k=2, over="problems") == pytest.approx((0.5, 0.5))


def test_bootstrap_ci_is_reproducible_and_covers_the_estimate():
    correct = (np.random.default_rng(0).random((200, 8)) < 0.3).astype(int)
    a = answers.bootstrap_ci(correct, seed=7)
    assert a == answers.bootstrap_ci(correct, seed=7)
    assert a != answers.bootstrap_ci(correct, seed=8)
    assert a[0] < correct.mean() < a[1]
    low, high = answers.bootstrap_ci(correct, k=4)
    assert low < np.mean([answers.pass_at_k(8, int(c), 4) for c in correct.sum(1)]) < high
    wide, narrow = answers.bootstrap_ci(correct, alpha=0.01), answers.bootstrap_ci(correct, alpha=0.5)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]
    with pytest.raises(ValueError):
        answers.bootstrap_ci(correct, over="rows")

