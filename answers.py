"""answers.py - is a model's final answer right? One checker for training rewards and evaluation.

    extract_answer   the final answer of a model output: \\boxed{}, an answer line, a choice letter, a number
    answers_match    exact comparison as numbers (1/2 == 0.5 == \\frac{1}{2}) or as normalised text
    is_correct       a model output against a reference answer
    row_correct      ... against a data row (a reasoning-gym row is scored by its task's own scorer)
    pass_at_k        the unbiased pass@k estimator (Chen et al. 2021)
    bootstrap_ci     a bootstrap confidence interval of avg@n or pass@k, over problems or over samples

Answers are parsed and compared as text and fractions; model output is never executed.
No torch: the ROPD trainer (`ropd.py`: the outcome-reward baseline, train accuracy) and the
evaluation (`eval.py`: avg@k, pass@k, the analyses) import the same functions.
"""
from __future__ import annotations

import re
from fractions import Fraction

import numpy as np

# ----------------------------------------------------------------------------------------------
# Answer extraction and comparison
# ----------------------------------------------------------------------------------------------

CHOICE_RE = re.compile(r"^[A-J]$")
NUMBER_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:/\d+)?|-?\.\d+")
# "Answer: X", "the answer is X", and the wordier "the answer to this problem is X" / "... question: X"
ANSWER_LINE_RE = re.compile(r"\banswer\b(?:\s+(?:to|for|of)\b[^:=\n]*?(?:\s+is\b|\s*[:=])|\s*is\b)?"
                            r"\s*[:=]?\s*(.+)$", re.I)


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


def extract_answer(text: str, choice: bool = False) -> str | None:
    """The final answer of a model output, by the first rule that applies:
    1. the last `\\boxed{...}`;  2. the last line saying "Answer: X" / "the answer is X";
    3. (multiple choice) the last standalone letter A-J, e.g. "(C)";  4. the last number."""
    text = _clean(text)
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    for line in reversed([ln for ln in text.splitlines() if ln.strip()]):
        m = ANSWER_LINE_RE.search(line)
        if m:
            ans = m.group(1).strip().rstrip(".").strip()
            if choice:
                letter = re.match(r"^\(?([A-J])\)?(?:\W|$)", ans)
                return letter.group(1) if letter else ans
            return ans
    if choice:
        letters = re.findall(r"(?:^|[\s(])\(?([A-J])\)?(?=[\s.,:)]|$)", text)
        return letters[-1] if letters else None
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


def normalize_answer(s: str) -> str:
    """Simple LaTeX and formatting noise removed: $...$, \\left/\\right, \\text{}, spacing commands,
    degrees, percent and dollar signs, a trailing period, spaces; \\dfrac -> \\frac; for "x = 5",
    the right-hand side."""
    s = _clean(s)
    for cmd in ("\\text", "\\textbf", "\\mathrm", "\\mathbf", "\\operatorname"):
        s = _unwrap(s, cmd)
    for a, b in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\ ", ""),
                 ("^{\\circ}", ""), ("^\\circ", ""), ("\\%", ""), ("%", ""), ("\\$", ""), ("$", ""),
                 ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\(", ""), ("\\)", ""),
                 ("\\[", ""), ("\\]", ""), (" ", "")):
        s = s.replace(a, b)
    if "=" in s:
        s = s.rsplit("=", 1)[1]
    s = s.rstrip(".").strip()
    while s.startswith("{") and last_boxed("\\boxed" + s) == s[1:-1]:  # {{1,000}} -> 1,000
        s = s[1:-1]
    return s


def parse_number(s: str) -> Fraction | None:
    """An exact number from a normalised answer: 1000, 1,000, -0.5, 1/2, \\frac{1}{2}, \\frac12,
    -\\frac{3}{4}, 2.5e3; None if it is not one."""
    m = re.fullmatch(r"(-?)\\frac\{?(-?\d+)\}?\{?(-?\d+)\}?", s)
    if m:
        num, den = int(m.group(2)), int(m.group(3))
        return None if den == 0 else Fraction(-num if m.group(1) else num, den)
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    if not re.fullmatch(r"-?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?(/-?\d+)?", s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(pred: str | None, gold: str) -> bool:
    """Equal as exact numbers when both are numbers (1/2 == 0.5 == \\frac{1}{2}), else equal as
    normalised text, ignoring case."""
    if pred is None:
        return False
    p, g = normalize_answer(pred), normalize_answer(str(gold))
    pn, gn = parse_number(p), parse_number(g)
    if pn is not None and gn is not None:
        return pn == gn
    return p.lower() == g.lower() and p != ""


def is_choice(answer) -> bool:
    """A one-letter reference answer (A-J) marks a multiple-choice question."""
    return answer is not None and bool(CHOICE_RE.match(str(answer).strip().upper()))


def is_correct(text: str, answer: str | None) -> bool:
    """Is a model output's final answer the reference `answer`? (A letter A-J is multiple choice.)"""
    if answer is None:
        return False
    gold = str(answer).strip()
    choice = is_choice(gold)
    got = extract_answer(text, choice)
    if choice:
        return got is not None and got.strip().upper() == gold.upper()
    return answers_match(got, gold)


def row_correct(text: str, row: dict) -> bool:
    """Is `text` right for a data row? A reasoning-gym row is scored by its task's own scorer
    (given the extracted answer, or else the last line); any other row by `is_correct`."""
    if "rg" not in row:
        return is_correct(text, row.get("answer"))
    import reasoning_gym

    entry = row["rg"]
    score = reasoning_gym.get_score_answer_fn(entry["metadata"]["source_dataset"])
    lines = [ln.strip() for ln in _clean(text).splitlines() if ln.strip()]
    candidates = {c for c in (extract_answer(text), lines[-1] if lines else None) if c}
    return any(score(c, entry) >= 1.0 for c in candidates)


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
    scores = np.empty(n_boot)
    for b in range(n_boot):
        if over == "problems":
            counts = correct.sum(axis=1)[rng.integers(0, problems, problems)]
        else:
            counts = np.take_along_axis(correct, rng.integers(0, n, (problems, n)), axis=1).sum(axis=1)
        scores[b] = score_of[counts].mean()
    low, high = np.quantile(scores, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)
