"""eval.py - held-out accuracy (avg@k, pass@k) and the paper's two analyses, for any checkpoint.

    python eval.py --model runs/ropd/checkpoint-000060 --data toy --samples 16      # benchmark
    python eval.py signal --model toy --teacher toy --data toy                     # AUC figure
    python eval.py phase --run runs/ropd --teacher toy --data toy                  # phase shift

Benchmark: k samples per problem (temperature 1.0, top-p 0.95 as in the paper), the final answer
extracted and compared after normalisation, then avg@k (mean fraction right) and the unbiased
pass@k of Chen et al. (2021), per problem and overall.

Signal quality (PAPER.md, "why rubrics"): for student rollouts of known correctness, how well does
each candidate reward predict correctness? The rubric score comes through the real
rubricator/verifier path of ropd.py; the teacher log-prob signals (mean teacher token log-prob,
mean teacher-student log-ratio) need a white-box teacher with the student's tokenizer. Each is
reported as a ROC AUC, pooled over all rollouts and averaged within groups (what GRPO uses).

Phase shift: over the checkpoints of one run, accuracy and the student's similarity to the teacher
(the teacher's mean token log-prob of the student's own samples): "mimicry, then divergence".

Answers are parsed and compared as text and fractions; model output is never executed.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

import grpo

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
# Metrics
# ----------------------------------------------------------------------------------------------

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are right: 1 - C(n-c, k) / C(n, k),
    computed as a product so that large n does not overflow (Chen et al. 2021)."""
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"need 0 < k <= n and 0 <= c <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def roc_auc(scores, labels) -> float:
    """ROC AUC = P(score of a random positive > score of a random negative), ties counting 1/2
    (Mann-Whitney U with average ranks). NaN when either class is empty."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average rank over each run of tied scores
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def group_auc(scores, labels, group_size: int) -> float:
    """Mean AUC within groups of `group_size` consecutive rollouts (groups with one class only are
    skipped): how well a signal ranks rollouts of the same prompt, which is all GRPO uses."""
    aucs = [roc_auc(scores[i:i + group_size], labels[i:i + group_size])
            for i in range(0, len(scores), group_size)]
    aucs = [a for a in aucs if not math.isnan(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def ks_for(n: int) -> list[int]:
    """pass@k is reported for k = 1, 2, 4, ... up to n (and n itself)."""
    ks = [k for k in (2 ** i for i in range(12)) if k <= n]
    return ks + ([n] if ks[-1] != n else [])


# ----------------------------------------------------------------------------------------------
# Benchmark evaluation
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model, tokenizer, rows: list[dict], samples: int = 16, temperature: float = 1.0,
             top_p: float = 0.95, max_new_tokens: int = 512, batch: int = 64, seed: int = 0,
             chat_template_kwargs: dict | None = None, progress: bool = True) -> dict:
    """k = `samples` completions per problem (rows: {"prompt", "answer"}), scored by `is_correct`.
    Returns overall avg@k and pass@k (k = 1, 2, 4, ..., samples) and the per-problem results.
    `temperature=0` is greedy decoding (then one sample per problem is enough)."""
    from tqdm import tqdm

    n = 1 if temperature == 0 else samples
    per_batch = max(1, batch // n)  # prompts per generate call: about `batch` sequences at a time
    problems = []
    bar = tqdm(total=len(rows), desc="eval", disable=not progress or None, dynamic_ncols=True)
    for s in range(0, len(rows), per_batch):
        chunk = rows[s:s + per_batch]
        ro = grpo.sample(model, tokenizer, [r["prompt"] for r in chunk], n=n, max_new_tokens=max_new_tokens,
                         temperature=temperature, top_p=top_p, seed=seed + s,
                         chat_template_kwargs=chat_template_kwargs)
        for i, r in enumerate(chunk):
            texts = ro.texts[i * n:(i + 1) * n]
            gold = r["answer"]
            c = sum(row_correct(t, r) for t in texts)
            problems.append({"prompt": r["prompt"], "answer": gold, "n": n, "correct": c,
                             "truncated": int(ro.truncated[i * n:(i + 1) * n].sum()),
                             "pass@k": {k: pass_at_k(n, c, k) for k in ks_for(n)},
                             "extracted": [extract_answer(t, is_choice(gold)) for t in texts],
                             "sample": texts[0]})
        bar.update(len(chunk))
    bar.close()
    m = len(problems)
    return {"problems_n": m, "samples": n, "temperature": temperature, "top_p": top_p,
            "max_new_tokens": max_new_tokens,
            f"avg@{n}": sum(p["correct"] / n for p in problems) / max(1, m),
            "pass@k": {k: sum(p["pass@k"][k] for p in problems) / max(1, m) for k in ks_for(n)},
            "truncated_frac": sum(p["truncated"] for p in problems) / max(1, m * n),
            "problems": problems}


def format_report(res: dict) -> str:
    n = res["samples"]
    head = f"{res['problems_n']} problems x {n} samples (T={res['temperature']}, top-p={res['top_p']})"
    cols = [f"avg@{n}"] + [f"pass@{k}" for k in res["pass@k"]]
    vals = [res[f"avg@{n}"]] + list(res["pass@k"].values())
    w = max(len(c) for c in cols) + 2
    return "\n".join([head, "".join(c.rjust(w) for c in cols), "".join(f"{v:.1%}".rjust(w) for v in vals)])


# ----------------------------------------------------------------------------------------------
# The paper's analyses
# ----------------------------------------------------------------------------------------------

def _mean_over_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.float()
    return (x * mask).sum(1) / mask.sum(1).clamp(min=1)


def _scores_student_tokens(teacher, tok) -> bool:
    """Can this teacher give log-probs of the student's tokens (local, or served by vLLM)?"""
    import teacher as teacher_lib

    if not hasattr(teacher, "token_logprobs"):
        return False
    try:
        teacher.check_tokenizer(tok)
    except teacher_lib.TeacherError:
        return False
    return True


def signal_analysis(student, tok, teacher, judge, rows: list[dict], a) -> dict:
    """How well does each reward signal predict the correctness of student rollouts?
    `a` is a ropd.Args (rollouts, sampling, references and judge settings). The rubric score goes
    through ropd's own path (references -> rubricator -> blind verifier -> weighted pass rate);
    the log-prob signals need `teacher.token_logprobs` and the student's tokenizer."""
    import ropd  # here, not at the top: ropd imports this module for its answer checker

    G = a.rollouts
    device = next(student.parameters()).device
    ro = grpo.sample(student, tok, [r["prompt"] for r in rows], n=G,
                     max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p,
                     seed=a.seed, chat_template_kwargs={"enable_thinking": a.enable_thinking})
    correct = np.array([row_correct(t, rows[i // G]) for i, t in enumerate(ro.texts)])
    refs = ropd.get_references(teacher, rows, a)
    results = ropd.ropd_rewards(judge, rows, ro.texts, refs, a)
    valid = np.repeat([r.fallback is None for r in results], G)
    signals = {"rubric score": np.array([x for r in results for x in r.rewards])}
    if _scores_student_tokens(teacher, tok):
        T = ro.completion_ids.shape[1]
        t_lp = teacher.token_logprobs(ro.input_ids, ro.attention_mask, T, a.temperature).float().cpu()
        s_lp = ropd.batched_logprobs(student, ro.input_ids, ro.attention_mask, ro.completion_mask,
                                     a.temperature, a.micro_batch, device)
        cmask = ro.completion_mask.cpu()
        signals["teacher log-prob"] = _mean_over_mask(t_lp, cmask).numpy()
        signals["teacher-student log-ratio"] = _mean_over_mask(t_lp - s_lp, cmask).numpy()
    out = {"prompts": len(rows), "rollouts": len(ro.texts), "correct_frac": float(correct.mean()),
           "fallback_groups": int(sum(r.fallback is not None for r in results)), "signals": {}}
    for name, s in signals.items():
        keep = valid if name == "rubric score" else np.ones_like(valid)
        # within-group AUC needs whole groups: a fallen-back group is dropped whole
        out["signals"][name] = {
            "auc": roc_auc(s[keep], correct[keep]),
            "group_auc": group_auc(s[keep], correct[keep], G),
            "mean_if_correct": float(s[keep & correct].mean()) if (keep & correct).any() else None,
            "mean_if_wrong": float(s[keep & ~correct].mean()) if (keep & ~correct).any() else None}
    out["rollouts_detail"] = [{"prompt": rows[i // G]["prompt"], "text": t, "correct": bool(correct[i]),
                               "fallback": not bool(valid[i]), **{k: float(v[i]) for k, v in signals.items()}}
                              for i, t in enumerate(ro.texts)]
    return out


def checkpoints(run: str) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint-NNNNNN under a run directory, in order."""
    found = sorted(Path(run).glob("checkpoint-*"))
    return [(int(p.name.split("-")[1]), p) for p in found if (p / "config.json").exists()]


@torch.no_grad()
def similarity(model, tok, teacher, rows: list[dict], samples: int, temperature: float,
               max_new_tokens: int, seed: int) -> dict:
    """The student's own samples, scored: accuracy, the teacher's mean token log-prob of them
    (similarity to the teacher), and the student's own (its confidence)."""
    import ropd  # see signal_analysis

    device = next(model.parameters()).device
    ro = grpo.sample(model, tok, [r["prompt"] for r in rows], n=samples,
                     max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    correct = [row_correct(t, rows[i // samples]) for i, t in enumerate(ro.texts)]
    T = ro.completion_ids.shape[1]
    cmask = ro.completion_mask.cpu()
    t_lp = teacher.token_logprobs(ro.input_ids, ro.attention_mask, T, temperature).float().cpu()
    s_lp = ropd.batched_logprobs(model, ro.input_ids, ro.attention_mask, ro.completion_mask, temperature,
                                 0, device)
    return {"accuracy": sum(correct) / len(correct),
            "teacher_logprob": float(_mean_over_mask(t_lp, cmask).mean()),
            "student_logprob": float(_mean_over_mask(s_lp, cmask).mean()),
            "length": float(cmask.float().sum(1).mean())}


def phase_analysis(run: str, teacher, rows: list[dict], samples: int, temperature: float,
                   max_new_tokens: int, seed: int, device, load_student) -> list[dict]:
    """Accuracy and similarity to the teacher at each checkpoint of a run (the paper's phase
    shift: similarity rises first, then falls while accuracy keeps rising). The run's initial
    student is step 0 when it can be loaded."""
    from tqdm import tqdm

    points = checkpoints(run)
    if not points:
        raise FileNotFoundError(f"no checkpoint-* folders under {run}")
    args = json.loads((Path(run) / "args.json").read_text()) if (Path(run) / "args.json").exists() else {}
    todo = ([(0, args["student"])] if args.get("student") else []) + [(s, str(p)) for s, p in points]
    out = []
    for step, path in tqdm(todo, desc="checkpoints", disable=None, dynamic_ncols=True):
        model, tok = load_student(path, device)
        model.eval()
        out.append({"step": step, "checkpoint": str(path),
                    **similarity(model, tok, teacher, rows, samples, temperature, max_new_tokens, seed)})
        del model
    return out


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------

TOY_MAX_NEW_TOKENS = 48


def load_rows(data: str, limit: int | None, world) -> list[dict]:
    """Problems with answers: the toy world's held-out set, reasoning-gym tasks (rg:TASKS, the
held-out seed), or a JSONL file (ropd.py's format)."""
    import ropd

    rows = ropd.load_data(data, 0, world, "test", limit)
    if any(r["answer"] is None for r in rows):
        raise ropd.UserError(f"{data}: every row needs an 'answer' to be evaluated")
    return rows


def model_loader(world, device):
    """name -> (model, tokenizer): 'toy' (the toy student), 'toy-teacher', a path or a hub name."""
    import ropd

    def load(name: str, dev=device):
        if name == "toy-teacher":
            name = str(world.teacher_path)
        model, tok = ropd.load_student(name, dev, world)
        return model.eval(), tok
    return load


def _common(ap: argparse.ArgumentParser):
    ap.add_argument("--data", default="toy",
                    help="JSONL with prompt and answer, 'toy' (held-out toy set) or rg:TASK[,TASK...] (reasoning-gym)")
    ap.add_argument("--world", default=None, help="toy world directory (default: the cache)")
    ap.add_argument("--limit", type=int, default=None, help="first N problems (toy default: 200)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="(default: 48 for toy data, else 4096)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None, help="JSON results file (default runs/eval/<command>.json)")


def main(argv=None) -> int:
    import ropd
    import teacher as teacher_lib
    import toy
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in ("signal", "phase") else "benchmark"
    ap = argparse.ArgumentParser(prog=f"eval.py{'' if command == 'benchmark' else ' ' + command}",
                                 description=__doc__.split("\n\n")[0])
    _common(ap)
    if command in ("benchmark", "signal"):
        ap.add_argument("--model", default="toy", help="checkpoint path, hub name, 'toy' or 'toy-teacher'")
    if command == "benchmark":
        ap.add_argument("--samples", type=int, default=16, help="k samples per problem")
        ap.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
        ap.add_argument("--top-p", type=float, default=0.95)
        ap.add_argument("--batch", type=int, default=64, help="sequences per generate call")
    else:
        ap.add_argument("--teacher", default="toy", help="teacher spec (see teacher.py)")
    if command == "signal":
        ap.add_argument("--prompts", type=int, default=32)
        ap.epilog = "Other ropd.py flags (--judge, --rollouts, --references, --judge-max-tokens, ...) pass through."
    if command == "phase":
        ap.add_argument("--run", required=True, help="a ropd.py output directory with checkpoint-* folders")
        ap.add_argument("--samples", type=int, default=4, help="samples per problem at each checkpoint")
        ap.add_argument("--temperature", type=float, default=1.0)
    ns, rest = ap.parse_known_args(argv) if command == "signal" else (ap.parse_args(argv), [])
    try:
        run_args = Path(getattr(ns, "run", None) or ".") / "args.json"
        needs_world = (ns.data == "toy" or getattr(ns, "model", "") in ("toy", "toy-teacher")
                       or (command == "phase" and run_args.exists()
                           and json.loads(run_args.read_text()).get("student") == "toy"))
        world = toy.build(root=ns.world) if needs_world else None
        max_new = ns.max_new_tokens or (TOY_MAX_NEW_TOKENS if ns.data == "toy" else 4096)
        device = ropd.pick_device(ns.device)
        load = model_loader(world, device)
        out = Path(ns.out or f"runs/eval/{command}.json")
        if command == "benchmark":
            rows = load_rows(ns.data, ns.limit, world)
            model, tok = load(ns.model)
            res = evaluate(model, tok, rows, ns.samples, ns.temperature, ns.top_p, max_new, ns.batch, ns.seed)
            res["model"] = ns.model
            report = format_report(res)
        elif command == "signal":
            toy_flags = [f"--{k.replace('_', '-')}={v}" for k, v in ropd.TOY_PRESET.items()
                         if k in ("teacher_temperature", "teacher_max_tokens", "judge_max_tokens")]
            a = ropd.parse_args((toy_flags if ns.data == "toy" else []) + [
                "--student", ns.model, "--teacher", ns.teacher, "--data", ns.data, "--seed", str(ns.seed),
                "--max-new-tokens", str(max_new), *rest])
            rows = load_rows(ns.data, ns.prompts, world)
            model, tok = load(ns.model)
            teacher, judge = ropd.load_teachers(a)  # a.teacher is ns.teacher
            res = signal_analysis(model, tok, teacher, judge, rows, a)
            res["model"], res["teacher"], res["judge"] = ns.model, ns.teacher, a.judge or ns.teacher
            report = "\n".join([f"{res['rollouts']} rollouts of {res['prompts']} prompts, "
                                f"{res['correct_frac']:.1%} correct, {res['fallback_groups']} groups fell back",
                                f"{'signal':<28}{'AUC':>8}{'in-group AUC':>14}"]
                               + [f"{k:<28}{v['auc']:>8.3f}{v['group_auc']:>14.3f}" for k, v in res["signals"].items()])
        else:
            rows = load_rows(ns.data, ns.limit or 64, world)
            teacher = teacher_lib.load(ns.teacher)
            if not hasattr(teacher, "token_logprobs"):
                raise ropd.UserError(f"the phase analysis needs a white-box teacher (hf:PATH or toy), got {ns.teacher!r}")
            pts = phase_analysis(ns.run, teacher, rows, ns.samples, ns.temperature, max_new, ns.seed, device, load)
            res = {"run": ns.run, "teacher": ns.teacher, "samples": ns.samples, "problems_n": len(rows),
                   "checkpoints": pts}
            report = "\n".join([f"{'step':>6}{'accuracy':>10}{'teacher logp':>14}{'student logp':>14}"]
                               + [f"{p['step']:>6}{p['accuracy']:>10.1%}{p['teacher_logprob']:>14.3f}"
                                  f"{p['student_logprob']:>14.3f}" for p in pts])
    except (ropd.UserError, teacher_lib.TeacherError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    print(report)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
