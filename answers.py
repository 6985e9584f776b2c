"""answers.py - is a model's final answer right? One checker for training rewards and evaluation.

    extract_answer   the final answer of a model output, by the first rule that applies: \\boxed{}, an
                     answer line, a choice letter, the last number or LaTeX fraction (strict: the first two)
    answers_match    exact comparison as numbers (1/2 == 0.5 == \\frac{1}{2}) or as normalised text
    is_correct       a model output against a reference answer
    row_correct      ... against a data row (a reasoning-gym row is scored by its task's own scorer)
    make_checker     the comparison by name: "builtin" (answers_match) or "math-verify" (optional, symbolic)
    pass_at_k        the unbiased pass@k estimator (Chen et al. 2021)
    bootstrap_ci     a bootstrap confidence interval of avg@n or pass@k, over problems or over samples

Answers are parsed and compared as text and fractions; model output is never executed (the optional
math-verify checker parses LaTeX into SymPy objects, see make_checker).
No torch: the ROPD trainer (`ropd.py`: the outcome-reward baseline, train accuracy) and the
evaluation (`eval.py`: avg@k, pass@k, the analyses) import the same functions.
"""
from __future__ import annotations

import re
import threading
from collections.abc import Callable
from fractions import Fraction

import numpy as np

# ----------------------------------------------------------------------------------------------
# Answer extraction and comparison
# ----------------------------------------------------------------------------------------------

CHOICE_RE = re.compile(r"^[A-J]$")
# a LaTeX fraction of integers: \frac{10}{9}, \dfrac{7}{2}, \frac13 (an unbraced argument is one digit)
FRAC = r"\\[dt]?frac(?:\{\s*-?\d+\s*\}|\d)(?:\{\s*-?\d+\s*\}|\d)"
# the last-number fallback: a fraction, 1,000 / MATH's 14{,}916, 12, -3.5, 1/2, .5
NUMBER_RE = re.compile(rf"-?{FRAC}|-?\d{{1,3}}(?:(?:,|\{{,\}})\d{{3}})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:/\d+)?|-?\.\d+")
# "Answer: X", "the answer is X", and the wordier "the answer to this problem is X" / "... question: X"
ANSWER_LINE_RE = re.compile(r"\banswer\b(?:\s+(?:to|for|of)\b[^:=\n]*?(?:\s+is\b|\s*[:=])|\s*is\b)?"
                            r"\s*[:=]?\s*(.*)$", re.I)
# the answer phrase said again: Minerva's "Final Answer: The final answer is X. I hope it is correct."
RESTATED_RE = re.compile(r"(?:the\s+)?(?:final\s+)?(?=answer\b)", re.I)
SENTENCE_END_RE = re.compile(r"(?<![\\\s])\.\s")  # "7.78. I hope ..." ends at 7.78 (a decimal point goes on)
MATH_DELIMITERS = ("$", "$$", "\\[", "\\]")
# an option letter: (C), [C], "C", 'C', or a bare C not inside a word ("can't", "I'm" are not options)
LETTER = r"""\(([A-J])\)|\[([A-J])\]|"([A-J])"|'([A-J])'|([A-J])(?![\w'])"""
LEADING_LETTER_RE = re.compile(rf"(?:(?i:option|choice)\s*)?(?:{LETTER})")
ANY_LETTER_RE = re.compile(rf"(?<![\w\\])(?:{LETTER})")
TEXT_COMMANDS = ("\\text", "\\textbf", "\\mbox", "\\mathrm", "\\mathbf", "\\operatorname")


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (or \\fbox{...}), nested braces included."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0 or text[start:i].strip("\\boxedfbox ") != "":
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None  # unbalanced: truncated output


def _clean(s: str) -> str:
    return s.replace("\u2212", "-").replace("**", "").strip()


def _answer_line(text: str) -> str | None:
    """The answer of the last answer line ("Answer: X", "the answer is X", "Final Answer: The final
    answer is X. I hope it is correct."): the text after the phrase, up to the end of its sentence;
    the next line when the phrase ends its line ("The answer is:\\n(C)"). None without one."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() not in ("",) + MATH_DELIMITERS]
    for i in reversed(range(len(lines))):
        m = ANSWER_LINE_RE.search(lines[i])
        if m is None:
            continue
        ans = m.group(1)
        while RESTATED_RE.match(ans) and (again := ANSWER_LINE_RE.search(ans)):
            ans = again.group(1)
        if ans.strip() == ".":
            continue  # "... check the answer." is prose, not an answer line
        if not ans.strip(" :"):
            if i + 1 == len(lines):
                continue  # "The answer is" with nothing after it: no answer here
            ans = lines[i + 1]
        return SENTENCE_END_RE.split(ans, maxsplit=1)[0].strip().rstrip(".").strip()
    return None


def _plain(s: str) -> str:
    """\\text{(C)} -> (C); $C$ -> C."""
    for cmd in TEXT_COMMANDS:
        s = _unwrap(s, cmd)
    return s.replace("$", "").strip()


def _choice_letter(answer: str) -> str | None:
    """The option letter an answer starts with: C, (C), "C", 'C', \\text{(C)}, option C; else None."""
    m = LEADING_LETTER_RE.match(_plain(answer))
    return next(g for g in m.groups() if g) if m else None


def _last_letter(text: str) -> str | None:
    """The last standalone option letter in a text, e.g. "(A) and (B) fail, so (D)" -> D."""
    letters = [next(g for g in m.groups() if g) for m in ANY_LETTER_RE.finditer(_plain(text))]
    return letters[-1] if letters else None


def extract_answer(text: str, choice: bool = False, strict: bool = False) -> str | None:
    """The final answer of a model output, by the first rule that applies:
    1. the last `\\boxed{...}`;  2. the last answer line (`_answer_line`: "Answer: X", "the answer is X");
    3. (multiple choice) the last standalone letter A-J, e.g. "(C)";  4. the last number or LaTeX
    fraction ("so $k = \\frac{1}{3}$" -> \\frac{1}{3}, not 3).
    For multiple choice (`choice`), an answer from 1 or 2 is read as its option letter when it starts
    with one ("\\text{(C)}", "(B) 42", "C; it can't be A or B" -> C).
    `strict` (training rewards) requires an explicit final answer, 1 or 2: no fallback to a last letter
    or number, so a truncated "0+7=" earns nothing."""
    text = _clean(text)
    ans = last_boxed(text)
    if ans is None:
        ans = _answer_line(text)
    if ans is not None:
        ans = ans.strip()
        return (_choice_letter(ans) or ans) if choice else ans
    if strict:
        return None
    if choice:
        return _last_letter(text)
    nums = NUMBER_RE.findall(text)
    return nums[-1] if nums else None


def _unwrap(s: str, command: str) -> str:
    """\\text{abc} -> abc (one level per occurrence, nested braces respected)."""
    out, i = "", 0
    while True:
        j = s.find(command + "{", i)
        if j < 0:
            return out + s[i:]
        out += s[i:j]
        depth, k = 0, j + len(command)
        for k in range(j + len(command), len(s)):
            depth += {"{": 1, "}": -1}.get(s[k], 0)
            if depth == 0:
                break
        out += s[j + len(command) + 1:k]
        i = k + 1


# a unit after a number: 5\text{ cm}, 12\,\text{m}^2, 3\mbox{ km/h}
UNIT_RE = re.compile(r"(?<=[\d}])(?:\s|\\[,;:! ])*\\(?:text|mbox|mathrm)\{\s*[A-Za-z][A-Za-z/.^\d ]*\}"
                     r"(?:\^\{?\d\}?)?$")
FRAC_RE = re.compile(r"([-+]?)\\frac(\{[-+]?\d+\}|\d)(\{[-+]?\d+\}|\d)")
THOUSANDS_RE = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
# a decimal, optionally over an integer: 2, +3, -0.5, .25, 2.5e3, 1/2, 2/-3, 2/(-3)
RATIO_RE = re.compile(r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)(?:/([-+]?\d+|\([-+]?\d+\)))?")
LIST_RE = re.compile(r",\s")  # "32, 349" is a list of two numbers; 32,349 and 32{,}349 are one


def normalize_answer(s: str) -> str:
    """Simple LaTeX and formatting noise removed: $...$, \\left/\\right, a unit after a number
    (5\\text{ cm}), \\text{}, spacing commands, MATH's 14{,}916 thousands separator, degrees, percent and
    dollar signs, a trailing period, spaces; \\dfrac -> \\frac; for "x = 5", the right-hand side."""
    s = UNIT_RE.sub("", _clean(s).replace("{,}", ","))
    for cmd in TEXT_COMMANDS:
        s = _unwrap(s, cmd)
    for a, b in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\ ", ""),
                 ("^{\\circ}", ""), ("^\\circ", ""), ("\\degree", ""), ("\u00b0", ""), ("\\%", ""), ("%", ""),
                 ("\\$", ""), ("$", ""), ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\(", ""), ("\\)", ""),
                 ("\\[", ""), ("\\]", ""), (" ", "")):
        s = s.replace(a, b)
    if "=" in s:
        s = s.rsplit("=", 1)[1]
    s = s.rstrip(".").strip()
    while s.startswith("{") and last_boxed("\\boxed" + s) == s[1:-1]:  # {{1,000}} -> 1,000
        s = s[1:-1]
    return s


def parse_number(s: str) -> Fraction | None:
    """An exact number from a normalised answer: 1000, 1,000, +3, -0.5, 2.5e3, 1/2, 2/(-3), \\frac{1}{2},
    \\frac12, \\frac{-2}{3}, -\\frac{3}{4}; None if it is not one. Commas are thousands separators only
    in groups of exactly three digits (1,000 but not 1,00); see `answers_match` for lists."""
    m = FRAC_RE.fullmatch(s)
    if m:
        sign, num, den = -1 if m.group(1) == "-" else 1, m.group(2).strip("{}"), m.group(3).strip("{}")
    else:
        m = RATIO_RE.fullmatch(s.replace(",", "") if THOUSANDS_RE.fullmatch(s) else s)
        if m is None:
            return None
        sign, num, den = 1, m.group(1), (m.group(2) or "1").strip("()")
    return None if int(den) == 0 else sign * Fraction(num) / int(den)


def answers_match(pred: str | None, gold: str) -> bool:
    """Equal as exact numbers when both are numbers (1/2 == 0.5 == \\frac{1}{2}), else equal as
    normalised text, ignoring case. An answer with a comma followed by a space is a list, never a
    number: gold 32349 does not match "32, 349", while gold "32, 349" matches "32, 349" and "32,349"
    (as text, spaces ignored)."""
    if pred is None:
        return False
    p, g = normalize_answer(pred), normalize_answer(str(gold))
    pn = None if LIST_RE.search(pred) else parse_number(p)
    gn = None if LIST_RE.search(str(gold)) else parse_number(g)
    if pn is not None and gn is not None:
        return pn == gn
    return p.lower() == g.lower() and p != ""


Checker = Callable[[str | None, str], bool]  # (extracted answer, reference answer) -> equal?


def is_choice(answer) -> bool:
    """A one-letter reference answer (A-J) marks a multiple-choice question."""
    return answer is not None and bool(CHOICE_RE.match(str(answer).strip().upper()))


def is_correct(text: str, answer: str | None, strict: bool = False, checker: Checker = answers_match) -> bool:
    """Is a model output's final answer the reference `answer`? A letter A-J is multiple choice,
    compared as a letter; any other answer by `checker` (see `make_checker`). `strict`: only an
    explicit final answer counts (see `extract_answer`)."""
    if answer is None:
        return False
    gold = str(answer).strip()
    choice = is_choice(gold)
    got = extract_answer(text, choice, strict)
    if choice:
        return got is not None and got.strip().upper() == gold.upper()
    return checker(got, gold)


def row_correct(text: str, row: dict, strict: bool = False, checker: Checker = answers_match) -> bool:
    """Is `text` right for a data row? A reasoning-gym row is scored by its task's own scorer (not
    `checker`), given the extracted answer or else the last line (with `strict`, the explicit answer only); any other
    row by `is_correct(text, row["answer"], strict, checker)`."""
    if "rg" not in row:
        return is_correct(text, row.get("answer"), strict, checker)
    import reasoning_gym

    entry = row["rg"]
    score = reasoning_gym.get_score_answer_fn(entry["metadata"]["source_dataset"])
    lines = [ln.strip() for ln in _clean(text).splitlines() if ln.strip()]
    last_line = None if strict or not lines else lines[-1]
    candidates = {c for c in (extract_answer(text, strict=strict), last_line) if c}
    return any(score(c, entry) >= 1.0 for c in candidates)


def make_checker(name: str = "builtin") -> Checker:
    """The comparison `is_correct(..., checker=)` / `row_correct(..., checker=)` use, by name:
    "builtin": `answers_match` (exact numbers, normalised text; nothing is executed).
    "math-verify": also equal when the math-verify package says so (sqrt(3)/2 == \\frac{\\sqrt{3}}{2},
    intervals, sets in any order). It reads LaTeX only (its plain-expression reader would hand model text
    to sympy's parse_expr, which evaluates Python); words ("Paris") stay text. Each parse and comparison
    has math-verify's 5 s time limit (a SIGALRM, so only on the main thread; none elsewhere).
    Raises ValueError for another name, or when math-verify is not installed."""
    if name == "builtin":
        return answers_match
    if name != "math-verify":
        raise ValueError(f"unknown checker {name!r}: builtin or math-verify")
    try:
        from math_verify import LatexExtractionConfig, parse, verify
    except ImportError:
        raise ValueError("--checker math-verify needs the math-verify package (pip install math-verify)") from None
    latex = [LatexExtractionConfig()]

    def as_math(s: str, limit: int | None):
        return parse("$" + s.strip().strip("$") + "$", extraction_config=latex, parsing_timeout=limit)

    def math_verify_match(pred: str | None, gold: str) -> bool:
        if answers_match(pred, gold):
            return True
        if pred is None or any(re.fullmatch(r"[A-Za-z]{2,}", normalize_answer(s)) for s in (pred, gold)):
            return False
        limit = 5 if threading.current_thread() is threading.main_thread() else None
        return bool(verify(as_math(str(gold), limit), as_math(pred, limit), timeout_seconds=limit))

    return math_verify_match


# ----------------------------------------------------------------------------------------------
# pass@k
# ----------------------------------------------------------------------------------------------

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are right: 1 - C(n-c, k) / C(n, k),
    computed as a product so that large n does not overflow (Chen et al. 2021)."""
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"need 0 < k <= n and 0 <= c <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def ks_for(n: int) -> list[int]:
    """pass@k is reported for k = 1, 2, 4, ... up to n (and n itself)."""
    ks = [k for k in (2 ** i for i in range(12)) if k <= n]
    return ks + ([n] if ks[-1] != n else [])


def bootstrap_ci(correct: np.ndarray, k: int | None = None, over: str = "problems", n_boot: int = 1000,
                 alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) confidence interval of a benchmark score.

    correct: [problems, samples] of 0/1, n samples per problem.  The score is avg@n (k=None: the mean
    over all samples) or pass@k (the unbiased `pass_at_k` of each problem, averaged over problems).
    over="problems": each resample draws the problems with replacement (each keeps its n samples), the
    spread from the choice of benchmark problems.  over="samples": the problems stay, and each one's n
    samples are drawn with replacement, the spread from sampling the model.  The n_boot scores come from
    numpy's default_rng(seed), so the interval is reproducible; it is their alpha/2 and 1 - alpha/2
    quantiles (numpy's default linear interpolation)."""
    correct = np.asarray(correct, dtype=int)
    problems, n = correct.shape
    if over not in ("problems", "samples"):
        raise ValueError(f'over must be "problems" or "samples", got {over!r}')
    # a problem's score depends only on its number of right samples c = 0..n
    score_of = np.arange(n + 1) / n if k is None else np.array([pass_at_k(n, c, k) for c in range(n + 1)])
    rng = np.random.default_rng(seed)
    scores, per_problem = np.empty(n_boot), correct.sum(axis=1)
    for b in range(n_boot):
        if over == "problems":
            counts = per_problem[rng.integers(0, problems, problems)]
        else:
            counts = np.take_along_axis(correct, rng.integers(0, n, (problems, n)), axis=1).sum(axis=1)
        scores[b] = score_of[counts].mean()
    low, high = np.quantile(scores, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)
