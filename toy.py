"""toy.py - the embedded offline world: a task, a tokenizer, a teacher and a student, built here.

No weights can be downloaded, so `python ropd.py` runs on a world this file builds on first use
(a few minutes on 2 CPU cores) and caches under ~/.cache/ropd/toy (or $ROPD_CACHE):

  * the task: left-to-right integer arithmetic, e.g. "((7+5)*3)-4", whose worked solution is one
    line per step ("7+5=12", "12*3=36", "36-4=32") and a final line "Answer: 32";
  * a character-level tokenizer (`tokenizers`), saved as an ordinary Hugging Face tokenizer with a
    chat template, so toy and real models share the same `apply_chat_template` code path;
  * a teacher (Qwen2-architecture causal LM, ~0.8M parameters) trained by SFT to >= 90% held-out
    accuracy: a real white-box teacher, so LOPD can run beside ROPD;
  * a smaller student (~0.17M) taught from a sloppier corpus: 60% of its solutions skip the work
    and give only "Answer: N". It learned the single steps, but it often answers in one line, and
    is then wrong more often - the gap between its answers and the teacher's that a rubric can name
    ("contains the line `7+5=12`") and ROPD can close.
Both models are saved with `save_pretrained`, loadable with `AutoModelForCausalLM.from_pretrained`.

Held-out problems are a fixed hash-slice of the question space that training never sees.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import answers
import grpo
import prompts

OPS = "+-*"
WORDS = {"+": "plus", "-": "minus", "*": "times"}
ANSWER_RE = re.compile(r"Answer:\s*(-?\d+)\s*$")
SPECIAL = {"pad": "<pad>", "unk": "<unk>", "eos": "<|end|>"}
ROLES = ("<|system|>", "<|user|>", "<|assistant|>")
CHARS = [chr(c) for c in range(32, 127)] + ["\n"]  # printable ASCII: any text tokenizes
# GPT-2 byte-level spelling of the two characters it does not keep as they are (all of 33-126 it does)
BYTE_LEVEL = {" ": "\u0120", "\n": "\u010a"}
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
BUILD_VERSION = 3  # bump when the build recipe changes, so old caches are not reused
# The toy world's answers are a few short lines: its generation settings (ropd.py's toy preset and
# eval.py use them for toy data)
GENERATION = dict(max_new_tokens=48, teacher_temperature=1.0, teacher_max_tokens=96, judge_max_tokens=4096)


# ----------------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    question: str                               # e.g. "((7+5)*3)-4"
    steps: tuple[tuple[int, str, int, int], ...]  # (a, op, b, a op b) in order
    answer: int

    @property
    def solution(self) -> str:
        """The worked solution the teacher learns to write (and the checker understands)."""
        return "\n".join(step_line(*s) for s in self.steps) + f"\nAnswer: {self.answer}"

    @property
    def shortcut_solution(self) -> str:
        """The answer line alone, no work shown."""
        return f"Answer: {self.answer}"

    @property
    def worded_solution(self) -> str:
        """The worked solution in words ("7 plus 5 is 12"): the mimicry world's teacher's style."""
        return "\n".join(f"{a} {WORDS[op]} {b} is {r}" for a, op, b, r in self.steps) + f"\nAnswer: {self.answer}"

    @property
    def no_carry_solution(self) -> str:
        """The worked solution of a teacher that drops carries (no_carry_add): every later step
        starts from its wrong result, so the chain stays consistent and ends wrong."""
        value, lines = self.steps[0][0], []
        for _, op, b, _ in self.steps:
            new = no_carry_add(value, b) if op == "+" else apply_op(value, op, b)
            lines.append(step_line(value, op, b, new))
            value = new
        return "\n".join(lines) + f"\nAnswer: {value}"

    def written(self, style: str) -> str:
        """The solution as a corpus of the given style writes it (see STYLES)."""
        if style not in STYLES:
            raise ValueError(f"unknown solution style {style!r}; expected one of {STYLES}")
        return getattr(self, {"worked": "solution", "bare": "shortcut_solution", "words": "worded_solution",
                              "no-carry": "no_carry_solution"}[style])

    def to_json(self) -> dict:
        return {"prompt": self.question, "answer": str(self.answer)}


def step_line(a: int, op: str, b: int, r: int) -> str:
    return f"{a}{op}{b}={r}"


def apply_op(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def no_carry_add(a: int, b: int) -> int:
    """The imperfect teacher's addition: adding to a two-digit number it drops the carry (27+5=22,
    27+15=32); below 10 it adds right (7+5=12). Wrong on about 1 problem in 8 of the task."""
    if a < 10 or b < 0:
        return a + b
    out, place = 0, 1
    while a or b:
        out += (a % 10 + b % 10) % 10 * place
        a, b, place = a // 10, b // 10, place * 10
    return out


def is_heldout(question: str, every: int = 8) -> bool:
    """The held-out slice: 1 question in `every`, chosen by a stable hash of its text."""
    return int(hashlib.sha1(question.encode()).hexdigest(), 16) % every == 0


def make_problem(rng: random.Random, n_steps: int, max_operand: int = 9,
                 max_value: int = 99) -> Problem:
    """One problem whose every intermediate result lies in [0, max_value] (rejection sampling)."""
    while True:
        value = rng.randint(1, max_operand)
        expr, steps = str(value), []
        for k in range(n_steps):
            op, b = rng.choice(OPS), rng.randint(1, max_operand)
            new = apply_op(value, op, b)
            if not 0 <= new <= max_value:
                break
            steps.append((value, op, b, new))
            expr = f"{expr}{op}{b}" if k == 0 else f"({expr}){op}{b}"
            value = new
        if len(steps) == n_steps:
            return Problem(expr, tuple(steps), value)


def make_problems(n: int, seed: int, split: str = "train", *, steps: tuple[int, ...] = (2, 3),
                  max_operand: int = 9, max_value: int = 99) -> list[Problem]:
    """`n` problems from the train or test (held-out) slice, reproducible from `seed`."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"{split}-{seed}")
    out = []
    while len(out) < n:
        p = make_problem(rng, rng.choice(steps), max_operand, max_value)
        if is_heldout(p.question) == (split == "test"):
            out.append(p)
    return out


def parse_question(question: str) -> list[tuple[int, str, int, int]] | None:
    """Recover the steps of a toy question ("((7+5)*3)-4") left to right; None if it is not one."""
    q = question.replace("(", "").replace(")", "").strip()
    m = re.fullmatch(r"(\d+)((?:[-+*]\d+)+)", q)
    if not m:
        return None
    value, steps = int(m.group(1)), []
    for op, b in re.findall(r"([-+*])(\d+)", m.group(2)):
        new = apply_op(value, op, int(b))
        steps.append((value, op, int(b), new))
        value = new
    return steps


def answer_line(text: str) -> int | None:
    """How the toy judge reads an answer's result: the integer on the last non-empty line if it
    reads 'Answer: N', else None. (Whether an answer is right is answers.is_correct's call.)"""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    m = ANSWER_RE.search(lines[-1].strip())
    return int(m.group(1)) if m else None


# ----------------------------------------------------------------------------------------------
# Tokenizer and models
# ----------------------------------------------------------------------------------------------

def build_tokenizer(pad_is_eos: bool = False, *, merges: bool = False):
    """A character-level tokenizer as a normal HF fast tokenizer with a chat template.

    Every printable ASCII character and newline is one token; roles and EOS are special tokens.
    `pad_is_eos=True` gives the pad == EOS layout of many chat models (used by the tests).
    `merges=True`: another vocabulary for the same text (the `xtok` world's teacher): every
    two-digit number and the word "Answer" are one token each, and every id differs.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [SPECIAL["pad"], SPECIAL["unk"], SPECIAL["eos"], *ROLES]
    chars = [BYTE_LEVEL.get(c, c) for c in CHARS]
    pairs = []
    if merges:  # BPE merges: digit pairs, then "Answer" letter by letter; the specials go last
        pairs = [(a, b) for a in "0123456789" for b in "0123456789"]
        pairs += [("A", "n"), ("An", "s"), ("Ans", "w"), ("Answ", "e"), ("Answe", "r")]
        chars = chars[::-1] + [a + b for a, b in pairs]
        specials = specials[::-1]
    vocab = {t: i for i, t in enumerate(chars + specials if merges else specials + chars)}
    # BPE without merges = one token per character. Byte-level, like Qwen2's own tokenizer: a
    # model folder's config says qwen2, and transformers 5 then loads the tokenizer as a
    # Qwen2Tokenizer with a byte-level pre-tokenizer; a vocabulary spelt any other way would
    # silently lose every space and newline when text is encoded (SFT targets, references).
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, unk_token=SPECIAL["unk"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=SPECIAL["unk"], eos_token=SPECIAL["eos"],
        pad_token=SPECIAL["eos"] if pad_is_eos else SPECIAL["pad"],
        additional_special_tokens=list(ROLES))
    hf.chat_template = CHAT_TEMPLATE
    hf.padding_side = "left"
    return hf


def build_model(tokenizer, hidden: int, layers: int, heads: int, seed: int, *, arch: str = "qwen2",
                max_positions: int = 256):
    """A small causal LM from a config (no download): Qwen2's architecture, or Llama's (`arch`)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    config_class = {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch]
    cfg = config_class(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=3 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def sft(model, tokenizer, problems: list[Problem], *, steps: int, batch: int, lr: float, seed: int,
        shortcut: float = 0.0, style: str = "worked", desc: str = "sft", log=print) -> list[float]:
    """Supervised fine-tuning on solutions written in `style` (loss on completion tokens, EOS
    included).

    `shortcut`: the fraction of solutions written without their steps (just "Answer: N") - the
    habit of a student taught from a corpus that is not the teacher's. AdamW, linear warm-up then
    cosine decay; returns the loss per step.
    """
    rng = random.Random(seed)
    coin = random.Random(f"shortcut-{seed}")  # its own stream: the batches do not depend on it
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    model.train()
    losses = []
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = grpo.cosine_lr(step, steps, warmup=max(1, steps // 20), base_lr=lr, min_ratio=0.1)
        b = rng.sample(problems, batch)
        p_ids, p_mask = grpo.encode_prompts(tokenizer, [p.question for p in b])
        texts = [p.shortcut_solution if coin.random() < shortcut else p.written(style) for p in b]
        c_ids, c_mask = grpo.encode_completions(tokenizer, texts)
        logp = grpo.token_logprobs(model, torch.cat([p_ids, c_ids], 1),
                                   torch.cat([p_mask, c_mask], 1), c_ids.shape[1])
        loss = grpo.sft_loss(logp, c_mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if log and (step + 1) % max(1, steps // 10) == 0:
            log(f"  [{desc}] step {step + 1}/{steps}  loss {sum(losses[-20:]) / len(losses[-20:]):.3f}"
                f"  ({time.time() - t0:.0f}s)")
    model.eval()
    return losses


@torch.no_grad()
def accuracy(model, tokenizer, problems: list[Problem], batch: int = 256,
             max_new_tokens: int = 48) -> float:
    """Greedy held-out accuracy (answers.is_correct), reported when the world is built."""
    right = 0
    for s in range(0, len(problems), batch):
        chunk = problems[s:s + batch]
        r = grpo.sample(model, tokenizer, [p.question for p in chunk], n=1,
                        max_new_tokens=max_new_tokens, temperature=0.0)
        right += sum(answers.is_correct(t, str(p.answer)) for t, p in zip(r.texts, chunk))
    return right / max(1, len(problems))


# ----------------------------------------------------------------------------------------------
# The toy judge: answers the real rubricator / verifier / T-Judge / OVD prompts of prompts.py
# ----------------------------------------------------------------------------------------------
# It reads the rendered prompt text (as an LLM would: the blocks, the rubric's JSON), and replies
# with JSON in the schema each prompt asks for, so the whole prompt -> JSON -> parse -> reward path
# runs for real, for every variant. Its criteria name the exact lines a right answer contains,
# which it can then check in each answer. It is a program: it cannot be talked round by text
# inside a block, and it ignores who wrote an answer (the sighted ablation changes nothing here).

STEP_LINE_RE = re.compile(r"^\s*(\d+)\s*([-+*])\s*(\d+)\s*=\s*(-?\d+)\s*$")
BLOCK_RE = re.compile(r'<(\w+)-(\w+)((?: \w+="[^"]*")*)>\n(.*?)\n</\1-\2>', re.S)


def _blocks(text: str) -> dict[str, list[str]]:
    """tag -> the contents of its blocks, in order (only blocks with the prompt's key)."""
    found = list(BLOCK_RE.finditer(text))
    key = found[0].group(2) if found else None
    out: dict[str, list[str]] = {}
    for m in found:
        if m.group(2) == key:
            out.setdefault(m.group(1), []).append(m.group(4))
    return out


def _lines(answer: str) -> list[str]:
    """The answer's non-empty lines with spaces removed ("7 + 5 = 12" reads as "7+5=12")."""
    return [ln.replace(" ", "") for ln in answer.strip().splitlines() if ln.strip()]


def _chain(answer: str) -> tuple | None:
    """A worked answer's (step lines, final answer), if it has the toy format."""
    steps = tuple(ln for ln in _lines(answer) if STEP_LINE_RE.match(ln))
    final = answer_line(answer)
    return (steps, final) if steps and final is not None else None


def _toy_rubric(question: str, references: list[str], students: list[str], paper: bool = False) -> dict:
    """Rubric induction (Eq. 2) for the toy task. The judge checks the references before it uses
    them (a reference may be wrong): it can work a toy question out itself, so the final-answer
    criterion names the true answer, and the step criteria name the steps of the references'
    worked solution only if one checks out line by line. References that show no work (or none
    that is right) get a rubric of the final answer and its format alone: the judge asks for no
    method the references do not show. A question it cannot read falls back on the references'
    most common worked solution, trusted as it is."""
    parsed = parse_question(question)
    chains = [c for c in map(_chain, references) if c]
    if parsed is not None:
        truth = (tuple(step_line(*st) for st in parsed), parsed[-1][3])
        steps, final = (truth[0] if truth in chains else ()), truth[1]
    elif chains:
        steps, final = max(chains, key=chains.count)
    else:
        return {"error": "the toy judge can only read toy arithmetic questions"}
    task, seen = (prompts.PAPER_CATEGORIES if paper else prompts.CATEGORIES)[:2]
    criteria = [{"category": seen, "points": 2,
                 "criterion": f"The response contains the line `{line}` (step {k + 1} worked out correctly)."}
                for k, line in enumerate(steps)]
    # sharpen the step most students miss (the key gap), unless the students have no gap
    misses = [sum(line not in _lines(s) for s in students) for line in steps]
    if max(misses, default=0) > 0:
        criteria[misses.index(max(misses))]["points"] = 4
    criteria.append({"category": task, "points": 5,
                     "criterion": f"The final line of the response is exactly `Answer: {final}`."})
    criteria.append({"category": task, "points": 1,
                     "criterion": "The response ends with a final line of the form `Answer: <integer>`."})
    if not steps:  # no worked solution to sharpen against: criteria that hold whatever the method
        criteria.append({"category": seen, "points": 2, "criterion": "Every computation line the response "
                         "shows (`a+b=c`, `a-b=c`, `a*b=c`) is arithmetically correct."})
        criteria.append({"category": seen, "points": 1,
                         "criterion": "The response states exactly one line of the form `Answer: <integer>`."})
    items = [{"criterion_id": f"c{k + 1}", "category": c["category"], "criterion": c["criterion"],
              ("weight" if paper else "points"): c["points"]} for k, c in enumerate(criteria)]
    total = sum(c["points"] for c in criteria)
    if paper:
        return {"schema_version": prompts.PAPER_RUBRIC_SCHEMA, "question_domain": "arithmetic", "rubrics": items,
                "K": len(items), "max_weighted_sum": total, "estimated_student_pass_rate": 0.3}
    return {"schema_version": prompts.RUBRIC_SCHEMA, "rubrics": items, "maximum_score": total}


def _check(criterion: str, answer: str) -> bool:
    lines = _lines(answer)
    m = re.search(r"contains the line `(.+?)`", criterion)
    if m:
        return m.group(1).replace(" ", "") in lines
    m = re.search(r"final line of the response is exactly `(.+?)`", criterion)
    if m:
        return bool(lines) and lines[-1] == m.group(1).replace(" ", "")
    if criterion.startswith("Every computation line"):
        return all(apply_op(int(m.group(1)), m.group(2), int(m.group(3))) == int(m.group(4))
                   for m in map(STEP_LINE_RE.match, lines) if m)
    if "exactly one line of the form" in criterion:
        return sum(bool(ANSWER_RE.fullmatch(ln)) for ln in lines) == 1
    if "`Answer: <integer>`" in criterion:
        return answer_line(answer) is not None
    return False  # a criterion it cannot read is not met


def _points(c: dict) -> int:
    """A rendered criterion's points (official prompts) or weight (App. D's)."""
    return c.get("points", c.get("weight", 0))


def _judge(crits: list[dict], answer: str) -> tuple[list[bool], int]:
    """Verification (Eq. 3) of one answer: each criterion of the rendered rubric checked."""
    judgement = [_check(c["criterion"], answer) for c in crits]
    return judgement, sum(_points(c) for c, v in zip(crits, judgement) if v)


def _toy_verdicts(rubric_json: str, answers: list[str]) -> dict:
    """The batch verifier's reply (official schema): every answer, in order."""
    crits, out = json.loads(rubric_json), []
    for i, a in enumerate(answers):
        judgement, points = _judge(crits, a)
        out.append({"answer_index": i + 1, "judgement": judgement, "final_score": points})
    return {"schema_version": prompts.VERDICT_SCHEMA, "answers": out}


def _toy_single_verdict(rubric_json: str, answer: str) -> dict:
    """App. D's per-response verifier's reply."""
    crits = json.loads(rubric_json)
    judgement, points = _judge(crits, answer)
    total = sum(_points(c) for c in crits)
    return {"schema_version": prompts.PAPER_VERDICT_SCHEMA, "judgements": judgement, "weighted_score": points,
            "pass_rate": points / total if total else 0.0}


def _toy_holistic(question: str, answer: str, tag: str) -> dict:
    """T-Judge and OVD for the toy task: 0.7 for the right final answer + 0.3 x the fraction of
    right steps, as a score in [0, 1] (T-Judge) or rounded to 0-9 (OVD)."""
    parsed = parse_question(question)
    if parsed is None:
        return {"error": "the toy judge can only read toy arithmetic questions"}
    steps = sum(step_line(*st) in _lines(answer) for st in parsed) / len(parsed)
    value = 0.7 * (answer_line(answer) == parsed[-1][3]) + 0.3 * steps
    return {"schema_version": tag, "score": round(9 * value) if tag == prompts.OVD_SCHEMA else round(value, 2)}


def toy_judge(chat: list[dict]) -> str:
    """Answer one judge chat (any prompt of prompts.py, told apart by the schema its system
    message asks for) with JSON text, deterministically."""
    tag = prompts.schema_tag(chat)
    blocks = _blocks("\n".join(m["content"] for m in chat if m["role"] == "user"))
    first = lambda name: (blocks.get(name) or [""])[0]  # noqa: E731
    if tag in (prompts.RUBRIC_SCHEMA, prompts.PAPER_RUBRIC_SCHEMA):
        out = _toy_rubric(first("question"), blocks.get("reference", []) + blocks.get("teacher", []),
                          blocks.get("student", []), paper=tag == prompts.PAPER_RUBRIC_SCHEMA)
    elif tag == prompts.VERDICT_SCHEMA:
        out = _toy_verdicts(first("rubric"), blocks.get("answer", []))
    elif tag == prompts.PAPER_VERDICT_SCHEMA:
        out = _toy_single_verdict(first("rubric"), first("response"))
    elif tag in (prompts.TJUDGE_SCHEMA, prompts.OVD_SCHEMA):
        out = _toy_holistic(first("question"), first("answer"), tag)
    else:
        out = {"error": "not a judge prompt"}
    return json.dumps(out)


# ----------------------------------------------------------------------------------------------
# The world: build once, cache, reload in seconds
# ----------------------------------------------------------------------------------------------

STYLES = ("worked", "bare", "words", "no-carry")  # how a corpus writes its solutions (Problem.written)
# What the build runs: a change to any of these files (or to torch / transformers) is a new recipe,
# so it gets a new world name and a stale cache is never taken for the current world.
BUILD_SOURCES = ("toy.py", "grpo.py", "answers.py")
# The default world, shipped (a few MB): a fresh clone's first run loads it instead of building it.
# Its weights are what this code builds, bit for bit: tests/test_worlds.py builds it and compares.
SHIPPED = Path(__file__).resolve().parent / "worlds"
BUILD_THREADS = 2  # the build's (and the toy runs') torch threads, on any machine: see pin_cpu_numerics


def code_fingerprint() -> str:
    """A hash of the build's code and of the libraries that run it."""
    import transformers

    h = hashlib.sha256(f"{BUILD_VERSION} torch {torch.__version__} transformers {transformers.__version__}".encode())
    for name in BUILD_SOURCES:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:12]


def pin_cpu_numerics(threads: int | None = BUILD_THREADS) -> str:
    """Make CPU float results the same on any x86-64 machine, so that a world built (or a run made)
    here is the one the README describes: torch's vectorised kernels at AVX2 rather than whatever
    the CPU offers (AVX-512 rounds differently), MKL's conditional numerical reproducibility at
    AVX2, and a fixed number of threads (how a matmul is split changes its last bits). Both
    settings are read at the first tensor operation, so this must run before any; variables the
    user set already win. Returns the capability in force."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
        os.environ.setdefault("MKL_CBWR", "AVX2")
    if threads:
        torch.set_num_threads(threads)
    return torch.backends.cpu.get_cpu_capability()


def _blob(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:10]


@dataclass
class ToyConfig:
    """Everything that determines the built world (its hash and the code's name the cache folder)."""
    seed: int = 0
    steps: tuple[int, ...] = (2, 3)
    max_operand: int = 9
    max_value: int = 99
    n_train: int = 20000
    n_test: int = 200
    # the teacher: its architecture ("arch": qwen2 | llama), its corpus ("style", STYLES), its vocabulary
    teacher: dict = field(default_factory=lambda: dict(hidden=128, layers=4, heads=4, arch="qwen2"))
    teacher_sft: dict = field(default_factory=lambda: dict(steps=600, batch=64, lr=3e-3, style="worked"))
    teacher_vocab: str = "char"  # "char" (the student's) or "merges" (another tokenizer)
    student: dict = field(default_factory=lambda: dict(hidden=64, layers=3, heads=4))
    # the student knows most single steps, but 60% of its corpus skipped the work: it often answers
    # in one line, and is then right less often than when it shows its steps (see the README)
    student_sft: dict = field(default_factory=lambda: dict(steps=1000, batch=64, lr=3e-3, shortcut=0.6))

    def task(self) -> dict:
        return dict(seed=self.seed, steps=list(self.steps), max_operand=self.max_operand,
                    max_value=self.max_value, n_train=self.n_train, n_test=self.n_test)

    def part_key(self, role: str) -> str:
        """The name of one model's build (shared by the worlds whose recipe for it is the same)."""
        return f"{role}-{_blob(code_fingerprint(), _recipe(self, role))}"

    def key(self) -> str:
        return _blob(code_fingerprint(), dataclasses.asdict(self))


def variant(**changes) -> ToyConfig:
    """The default world with some of its recipe changed (dict fields are updated, not replaced)."""
    base = ToyConfig()
    return dataclasses.replace(base, **{k: {**getattr(base, k), **v} if isinstance(v, dict) else v
                                        for k, v in changes.items()})


# The worlds built to expose what the paper claims (README, "Worlds"); each was designed from its
# mechanism, written down before its first run, and not tuned afterwards.
WORLDS = {
    # every signal points the same way: the teacher's worked steps are what the student should do
    "default": ToyConfig(),
    # the mimicry trap: a teacher that writes its steps in words ("7 plus 5 is 12"): right, and as
    # easy as digits for a model trained on it; the student learnt arithmetic as "7+5=12", and
    # three worded steps do not fit its 48 tokens. Copying the teacher's tokens costs it its method
    "mimicry": variant(teacher_sft=dict(style="words")),
    # another tokenizer and architecture: only text can cross from teacher to student
    "xtok": variant(teacher=dict(arch="llama"), teacher_vocab="merges"),
    # an imperfect teacher: adding to a two-digit number it drops the carry (27+5=22), so it is
    # wrong on about 1 problem in 8, consistently; the student learnt to add right
    "imperfect": variant(teacher_sft=dict(style="no-carry")),
}

# A world small enough for unit tests (seconds); nothing in it is expected to be accurate.
TEST_CONFIG = ToyConfig(n_train=2000, n_test=32,
                        teacher=dict(hidden=32, layers=2, heads=2),
                        teacher_sft=dict(steps=30, batch=32, lr=3e-3),
                        student=dict(hidden=32, layers=1, heads=2),
                        student_sft=dict(steps=10, batch=32, lr=3e-3))


@dataclass
class ToyWorld:
    root: Path
    config: ToyConfig
    teacher_accuracy: float
    student_accuracy: float
    fingerprints: dict = field(default_factory=dict)  # role -> weights_fingerprint

    @property
    def tokenizer_path(self) -> Path:
        return self.root / "tokenizer"

    @property
    def teacher_path(self) -> Path:
        return self.root / "teacher"

    @property
    def student_path(self) -> Path:
        return self.root / "student"

    def problems(self, split: str, n: int | None = None, seed: int | None = None) -> list[Problem]:
        c = self.config
        n = n if n is not None else (c.n_test if split == "test" else c.n_train)
        return make_problems(n, c.seed if seed is None else seed, split, steps=c.steps,
                             max_operand=c.max_operand, max_value=c.max_value)


def cache_dir() -> Path:
    return Path(os.environ.get("ROPD_CACHE", Path.home() / ".cache" / "ropd")) / "toy"


def weights_fingerprint(folder: Path) -> str:
    """A hash of a saved model's tensors (names, dtypes, shapes, bytes): two builds made the same
    world exactly when their fingerprints agree."""
    from safetensors.torch import load_file

    state, h = load_file(str(Path(folder) / "model.safetensors")), hashlib.sha256()
    for name in sorted(state):
        t = state[name].contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _build_part(config: ToyConfig, role: str, folder: Path, log) -> float:
    """Train one model of the world (teacher or student) into `folder`; returns its held-out
    accuracy (greedy, against the true answers)."""
    merges = role == "teacher" and config.teacher_vocab == "merges"
    tok = build_tokenizer(merges=merges)
    arch, sft_cfg = (config.teacher, config.teacher_sft) if role == "teacher" else (config.student, config.student_sft)
    seed = config.seed if role == "teacher" else config.seed + 1
    task = dict(steps=config.steps, max_operand=config.max_operand, max_value=config.max_value)
    train = make_problems(config.n_train, config.seed, "train", **task)
    test = make_problems(config.n_test, config.seed, "test", **task)
    model = build_model(tok, seed=seed, **arch)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{role}: {n_params / 1e6:.2f}M parameters ({arch.get('arch', 'qwen2')}, "
        f"{'another' if merges else 'the student'}'s vocabulary), SFT {sft_cfg['steps']} steps "
        f"on {sft_cfg.get('style', 'worked')} solutions")
    sft(model, tok, train, seed=seed, desc=role, log=log, **sft_cfg)
    acc = accuracy(model, tok, test)
    log(f"{role}: held-out accuracy {acc:.1%}")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)  # each model folder is self-contained
    (folder / "accuracy.json").write_text(json.dumps({"accuracy": acc}))
    return acc


def _recipe(config: ToyConfig, role: str) -> list:
    """What one model's build depends on, besides the code."""
    return [config.task(), role, *([config.teacher, config.teacher_sft, config.teacher_vocab] if role == "teacher"
                                   else [config.student, config.student_sft])]


def _config_of(info: dict) -> ToyConfig:
    """The config a world.json records (JSON turned its tuple into a list)."""
    return ToyConfig(**{**info["config"], "steps": tuple(info["config"]["steps"])})


def _shipped(config: ToyConfig, role: str | None = None) -> Path | None:
    """The shipped world made with this recipe (the whole config, or one model's), if any."""
    for meta in sorted(SHIPPED.glob("*/world.json")):
        info = json.loads(meta.read_text())
        shipped = _config_of(info)
        if (shipped == config) if role is None else (_recipe(shipped, role) == _recipe(config, role)):
            return meta.parent
    return None


def _part(config: ToyConfig, role: str, parts: Path, log, *, use_shipped: bool = True) -> Path:
    """One model of the world, built once into the parts cache (worlds that share a recipe for it,
    such as every world's student, share the build; a shipped world's model is copied, not built,
    unless `use_shipped` is off)."""
    folder = parts / config.part_key(role)
    if not (folder / "accuracy.json").exists():
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shipped = _shipped(config, role) if use_shipped else None
        if shipped:
            shutil.copytree(shipped / role, tmp)
            acc = json.loads((shipped / "world.json").read_text())[f"{role}_accuracy"]
            (tmp / "accuracy.json").write_text(json.dumps({"accuracy": acc}))
        else:
            tmp.mkdir(parents=True)
            _build_part(config, role, tmp, log)
        if folder.exists():  # another process finished first: keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, folder)
    return folder


def world_config(name: str) -> ToyConfig:
    if name not in WORLDS:
        raise ValueError(f"unknown toy world {name!r}; expected a folder or one of: {', '.join(WORLDS)}")
    return WORLDS[name]


def load_world(spec: str | None = None, log=print) -> ToyWorld:
    """--world: a world's name (WORLDS; default 'default'), built once and cached, or the folder
    of a world built before (python toy.py --root DIR)."""
    if spec and spec not in WORLDS:
        return build(root=spec, log=log)
    config = world_config(spec or "default")
    shipped = _shipped(config)
    if shipped and not (cache_dir() / config.key() / "world.json").exists():
        return build(root=shipped, log=log)  # loaded as it is: nothing writes into a world's folder
    return build(config, log=log)


def build(config: ToyConfig | None = None, root: str | Path | None = None, log=print, *,
          use_shipped: bool = True) -> ToyWorld:
    """Build (or load from cache) the toy world. Atomic: a half-built world is never reused. The
    folder's name is the recipe's hash (its config and the build's code), so a changed recipe
    builds a new world; world.json records the weights' fingerprints. `use_shipped=False` trains
    every model, even one a shipped world has (the check that the shipped world is this code's)."""
    config = config or ToyConfig()
    log = log or (lambda *a: None)
    root = Path(root) if root else cache_dir() / config.key()
    meta = root / "world.json"
    if meta.exists():  # the world as it was built (its own config, whatever was asked)
        info = json.loads(meta.read_text())
        cfg = _config_of(info)
        return ToyWorld(root, cfg, info["teacher_accuracy"], info["student_accuracy"], info.get("fingerprints", {}))

    threads = torch.get_num_threads()
    capability = pin_cpu_numerics()
    t0 = time.time()
    log(f"building the toy world in {root} (once; cached afterwards)")
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    build_tokenizer().save_pretrained(tmp / "tokenizer")
    acc, prints = {}, {}
    for role in ("teacher", "student"):
        part = _part(config, role, root.parent / "parts", log, use_shipped=use_shipped)
        shutil.copytree(part, tmp / role)
        acc[role] = json.loads((part / "accuracy.json").read_text())["accuracy"]
        prints[role] = weights_fingerprint(part)
    torch.set_num_threads(threads)
    info = {"teacher_accuracy": acc["teacher"], "student_accuracy": acc["student"], "fingerprints": prints,
            "code": code_fingerprint(), "cpu_capability": capability, "config": dataclasses.asdict(config),
            "build_seconds": round(time.time() - t0, 1)}
    (tmp / "world.json").write_text(json.dumps(info, indent=2))
    root.parent.mkdir(parents=True, exist_ok=True)
    if root.exists():  # another process finished first: keep theirs
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, root)
    log(f"toy world ready in {time.time() - t0:.0f}s: teacher {acc['teacher']:.1%}, "
        f"student {acc['student']:.1%}")
    return ToyWorld(root, config, acc["teacher"], acc["student"], prints)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Build (or show) the embedded toy world.")
    ap.add_argument("--root", default=None, help="where to build it (default: the cache)")
    ap.add_argument("--world", default="default", choices=list(WORLDS), help="which world (default: default)")
    ap.add_argument("--test-size", action="store_true", help="the tiny unit-test world")
    ap.add_argument("--json", default=None, help="also write the world's description (world.json) here")
    ap.add_argument("--rebuild", action="store_true", help="train every model, even those the shipped default "
                    "world has (with --root: a fresh build, to compare with the shipped one)")
    ap.add_argument("--student-heads", type=int, default=None, help="the student's attention heads (2: heads 32 "
                    "wide, which vLLM's CPU attention needs for --sampler vllm; the worlds' students have 4)")
    args = ap.parse_args(argv)
    pin_cpu_numerics()
    config = TEST_CONFIG if args.test_size else world_config(args.world)
    if args.student_heads:
        config = dataclasses.replace(config, student={**config.student, "heads": args.student_heads})
    if args.test_size or args.root or args.rebuild or args.student_heads:
        w = build(config, args.root, use_shipped=not args.rebuild)
    else:
        w = load_world(args.world)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(w.root / "world.json", args.json)
    print(json.dumps({"root": str(w.root), "teacher_accuracy": w.teacher_accuracy,
                      "student_accuracy": w.student_accuracy, "fingerprints": w.fingerprints}, indent=2))


if __name__ == "__main__":
    main()
