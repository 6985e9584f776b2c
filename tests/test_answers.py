"""answers.py: answer extraction and comparison on the shapes real models write, pass@k and its
bootstrap interval by hand, the optional math-verify checker."""
import sys
import threading
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



# More shapes, each checked by value against a reference: right and wrong
MINERVA = [
    ("Final Answer: The final answer is 7.78. I hope it is correct.", "7.78", True),
    ("Final Answer: The final answer is 7.78. I hope it is correct.", "7.8", False),
    ("Final Answer: The final answer is $\\frac{5}{6}$. I hope it is correct.", "5/6", True),
    ("Final Answer: The final answer is $-2$. I hope it is correct.", "-2", True),
    ("Final Answer: The final answer is 2. I hope it is correct.", "3", False),
    ("Final Answer: The final answer is (-1, 4). I hope it is correct.", "(-1,4)", True),
    ("The final answer is 1,024. I hope it is correct.", "1024", True),
    ("We solve for x.\nFinal Answer: The final answer is $x=12$. I hope it is correct.", "12", True),
]
FRACTION_FALLBACK = [  # no \boxed{}, no answer line: the last number, where a LaTeX fraction is one number
    ("Dividing, we get \\frac{10}{9}", "10/9", True),
    ("Dividing, we get \\frac{10}{9}", "9", False),
    ("so the probability is $\\frac13$", "1/3", True),
    ("so the probability is $\\frac13$", "13", False),
    ("Therefore $k = \\frac{1}{3}$", "\\frac{1}{3}", True),
    ("Therefore $k = \\frac{1}{3}$", "3", False),
    ("the slope is \\dfrac{7}{2}", "3.5", True),
    ("the slope is \\tfrac{7}{2}", "7/2", True),
    ("and the ratio comes to -\\frac{3}{4}", "-0.75", True),
    ("and the ratio comes to -\\frac{3}{4}", "0.75", False),
    ("4 parts of 12, that is \\frac{ 4 }{ 12 }", "1/3", True),
]
CHOICES = [
    ("Checking each option: \\boxed{\\text{(C)}}", "C", True),
    ("Checking each option: \\boxed{\\text{(C)}}", "D", False),
    ("$\\boxed{C}$", "C", True),
    ("\\boxed{(E)}", "E", True),
    ("Only one works, so the answer is \\textbf{(C)}", "C", True),
    ("Only one works: \\textbf{(C)} 17", "C", True),
    ("The answer is:\n(C)", "C", True),
    ("The answer is:\n(C)", "A", False),
    ("Therefore, the answer is:\n\n**(B)**", "B", True),
    ('The answer is "C"', "C", True),
    ("The answer is 'C'.", "C", True),
    ('The answer is "C"', "B", False),
    ("The answer is C; it can't be A or B", "C", True),
    ("The answer is C; it can't be A or B", "B", False),
    ("Answer: C. It can't be A or B.", "C", True),
    ("Answer: C. It can't be A or B.", "A", False),
    ("Answer: (B) 42", "B", True),
    ("Answer: (B) 42", "A", False),
    ("**Answer:** D", "D", True),
    ("**Answer:** D", "C", False),
    ("The correct answer is option B.", "B", True),
    ("Answer: [A]", "A", True),
    ("It is not (A); I'm sure it is (B)", "B", True),   # "I'm" is not option I
]
NUMBER_FORMATS = [
    ("Answer: 14{,}916", "14916", True),
    ("Answer: 14{,}916", "14,916", True),
    ("Answer: 14{,}916", "1491", False),
    ("\\boxed{1{,}000{,}000}", "1000000", True),
    ("The population grew to 1{,}000{,}000", "1000000", True),   # last-number fallback
    ("Answer: 5\\text{ cm}", "5", True),
    ("Answer: 5\\text{ cm}", "6", False),
    ("\\boxed{5\\mbox{ cm}}", "5", True),
    ("\\boxed{12\\,\\text{m}^2}", "12", True),
    ("\\boxed{3 \\text{ km/h}}", "3", True),
    ("\\boxed{\\frac{1}{2}\\text{ inches}}", "0.5", True),
    ("Answer: +3", "3", True),
    ("Answer: +3", "-3", False),
    ("Answer: 2/(-3)", "-2/3", True),
    ("Answer: 2/(-3)", "2/3", False),
    ("Answer: \\frac{-2}{3}", "-2/3", True),
    ("Answer: \\frac{-2}{3}", "\\frac{2}{3}", False),
    ("Answer: 32, 349", "32349", False),          # a comma and a space: a list, not 32349
    ("Answer: 32, 349", "32, 349", True),
    ("Answer: 32,349", "32, 349", True),           # compared as text, spaces ignored
    ("Answer: 32,349", "32349", True),             # groups of three, no space: one number
    ("Answer: 1,00", "100", False),                # a group of two digits: not a thousands separator
    ("Answer: 50\\%", "50%", True),
    ("Answer: 50%", "50", True),
    ("Answer: 50%", "0.5", False),                 # a percentage is compared as the number written
    ("\\boxed{45^{\\circ}}", "45", True),
    ("The angle is 45\u00b0.", "45", True),
    ("Answer: \\$12.50", "12.5", True),
    ("Answer: $\\$1{,}200$", "1200", True),
]
STRICT = [  # (model output, reference, right with strict=False, right with strict=True)
    ("2+4=6\n6-6=0\n0+7=", "7", True, False),      # truncated: the 7 is the question, not an answer
    ("The sum is 7", "7", True, False),
    ("so the answer is (C) maybe, or (D)", "D", False, False),
    ("Options (A) and (B) fail, so (D)", "D", True, False),
    ("Answer: 7", "7", True, True),
    ("the answer is 7.", "7", True, True),
    ("\\boxed{7}", "7", True, True),
    ("Final Answer: The final answer is 7. I hope it is correct.", "7", True, True),
    ("The answer is:\n(C)", "C", True, True),
    ("We need 7 more\nThe answer is", "7", True, False),   # the phrase with nothing after it
]
NEW_ANSWERS = MINERVA + FRACTION_FALLBACK + CHOICES + NUMBER_FORMATS


@pytest.mark.parametrize("text,gold,right", ANSWERS + NEW_ANSWERS)
def test_is_correct_on_realistic_answers(text, gold, right):
    assert answers.is_correct(text, gold) is right


@pytest.mark.parametrize("text,gold,right,right_strict", STRICT)
def test_strict_needs_an_explicit_answer(text, gold, right, right_strict):
    assert answers.is_correct(text, gold) is right
    assert answers.is_correct(text, gold, strict=True) is right_strict
    assert answers.row_correct(text, {"answer": gold}, strict=True) is right_strict


def test_strict_extraction_has_no_fallback():
    assert answers.extract_answer("2+4=6\n6-6=0\n0+7=") == "7"
    assert answers.extract_answer("2+4=6\n6-6=0\n0+7=", strict=True) is None
    assert answers.extract_answer("(A) or (B)", choice=True, strict=True) is None
    assert answers.extract_answer("so \\boxed{7}", strict=True) == "7"


def test_extraction_reads_the_answer_itself():
    assert answers.extract_answer("Final Answer: The final answer is 7.78. I hope it is correct.") == "7.78"
    assert answers.extract_answer("so $k = \\frac{1}{3}$") == "\\frac{1}{3}"
    assert answers.extract_answer("\\boxed{\\text{(C)}}", choice=True) == "C"
    assert answers.extract_answer("The answer is:\n$$\nx = 5\n$$") == "x = 5"
    assert answers.extract_answer("The answer is 12. Then we check it.") == "12"
    assert answers.extract_answer("Answer: 3.5") == "3.5"
    assert answers.extract_answer("Answer:\n\n42\n", strict=True) == "42"
    assert answers.extract_answer("Let me check the answer.\nIt is 7") == "7"  # prose, then the last number
    assert answers.extract_answer("Let me check the answer.\nIt is 7", strict=True) is None


def test_last_boxed_nested_and_extraction_order():
    assert answers.last_boxed("x \\boxed{\\frac{a}{b^{2}}} y") == "\\frac{a}{b^{2}}"
    assert answers.last_boxed("no box") is None
    # a boxed answer wins over a later 'Answer:' line, which wins over a later number
    assert answers.extract_answer("\\boxed{3}\nAnswer: 4") == "3"
    assert answers.extract_answer("Answer: 4\nchecked with 5 examples") == "4"
    assert answers.extract_answer("1 2 3") == "3"


@pytest.mark.parametrize("s,value", [("1,000", 1000), ("0.5", 0.5), ("\\frac{1}{2}", 0.5), ("1/2", 0.5),
                                     ("-\\frac{3}{4}", -0.75), ("\\frac12", 0.5), (".25", 0.25), ("2.5e3", 2500),
                                     ("+3", 3), ("2/(-3)", -2 / 3), ("2/-3", -2 / 3), ("\\frac{-2}{3}", -2 / 3),
                                     ("-\\frac{-1}{4}", 0.25), ("14,916", 14916), ("-1,000.5", -1000.5)])
def test_parse_number(s, value):
    assert float(answers.parse_number(s)) == value


@pytest.mark.parametrize("s", ["1,00", "abc", "1/0", "\\frac{1}{0}", "(2,3)", "2/(-0)", "\\frac123",
                               "32,3490", "1/2/3", "++3"])
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


# ----------------------------------------------------------------------------------------------
# checkers
# ----------------------------------------------------------------------------------------------

def test_make_checker_builtin_and_errors(monkeypatch):
    assert answers.make_checker("builtin") is answers.answers_match
    with pytest.raises(ValueError, match="unknown checker"):
        answers.make_checker("sympy")
    monkeypatch.setitem(sys.modules, "math_verify", None)  # as if not installed: the import fails
    with pytest.raises(ValueError, match="pip install math-verify"):
        answers.make_checker("math-verify")


# (extracted answer, reference, builtin's verdict, math-verify's verdict)
SYMBOLIC = [
    ("\\frac{\\sqrt{3}}{2}", "\\sqrt{3}/2", False, True),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt{2}}{2}", False, False),
    ("2\\sqrt{2}", "\\sqrt{8}", False, True),
    ("\\frac{\\pi}{2}", "\\pi/2", False, True),
    ("(0, \\frac{2}{2}]", "(0, 1]", False, True),
    ("(0, 0.5]", "\\left(0, \\frac{1}{2}\\right]", False, True),
    ("(2,3)\\cup(0,1]", "(0,1]\\cup(2,3)", False, True),
    ("(0, 1)", "(0, 1]", False, False),
    ("[0, 1]", "(0, 1]", False, False),
    ("\\{2, 1\\}", "\\{1, 2\\}", False, True),
    ("\\{1, 3\\}", "\\{1, 2\\}", False, False),
    ("1+x", "x+1", False, True),
    ("1/3", "\\frac{1}{3}", True, True),
    ("0.3333", "1/3", False, False),
    ("pairs", "Paris", False, False),   # words stay text (math-verify would read both as p*a*r*i*s)
    ("Paris", "\\text{Paris}", True, True),
    (None, "1", False, False),
]


@pytest.mark.parametrize("pred,gold,builtin,symbolic", SYMBOLIC)
def test_math_verify_checker(pred, gold, builtin, symbolic):
    pytest.importorskip("math_verify", reason="math-verify is not installed (pip install math-verify)")
    check = answers.make_checker("math-verify")
    assert answers.answers_match(pred, gold) is builtin
    assert check(pred, gold) is symbolic


def test_math_verify_checker_through_is_correct_and_row_correct():
    pytest.importorskip("math_verify", reason="math-verify is not installed (pip install math-verify)")
    check = answers.make_checker("math-verify")
    text = "so the height is $\\boxed{\\frac{\\sqrt{3}}{2}}$"
    assert not answers.is_correct(text, "\\sqrt{3}/2")
    assert answers.is_correct(text, "\\sqrt{3}/2", checker=check)
    assert answers.row_correct(text, {"answer": "\\sqrt{3}/2"}, checker=check)
    assert not answers.is_correct("2+4=6\n\\sqrt{3}/2", "\\sqrt{3}/2", strict=True, checker=check)
    assert answers.is_correct("Answer: C", "C", checker=check)            # letters stay letters
    assert not answers.is_correct("Answer: \\{1,2\\}", "C", checker=check)
    results = []                                                          # off the main thread: no SIGALRM
    worker = threading.Thread(target=lambda: results.append(check("\\{2, 1\\}", "\\{1, 2\\}")))
    worker.start()
    worker.join()
    assert results == [True]
