"""ropd.py - Rubric-based On-policy Distillation (arXiv 2605.07396), and its baselines, end to end.

    python ropd.py                                   # ROPD on the embedded toy world (CPU, minutes)
    python ropd.py --student Qwen/Qwen3-1.7B --teacher openai:gpt-4o-mini --data train.jsonl

A student learns on-policy from a teacher that gives only text. One training step (Algorithm 1,
App. F; the functions below, in the order `train` calls them):

    sample_rollouts     G rollouts per prompt from the student, and log pi_theta_old   §2.1, Eq. 7
    get_references      K teacher answers per prompt, paid once, then replayed         Eq. 1
    ropd_reward         one shared rubric per prompt from references vs rollouts       Eq. 2
                        a blind verifier grades references + rollouts together         Eq. 3
                        the weighted pass rate of each rollout is its reward           Eq. 4, Alg. 1 l. 17
    apply_failure_policy a group the judge could not score teaches nothing; too many stop the run
    compute_advantages  A_i = s_i - mean(group)                                        Eq. 6, Alg. 1 l. 20
    grpo.update_policy  the clipped surrogate, mini-batch by mini-batch                Eqs. 7-8, Alg. 1 l. 25

A baseline is another reward function with the same signature (§3.1): `lopd_reward` (per-token
teacher log-probs: white-box), `tjudge_reward` (one holistic teacher score per rollout),
`outcome_reward` (the data's answers, plain GRPO); `sft` fine-tunes on the references instead.

What this loop simplifies, and why: one process samples and learns (no vLLM sampler, so no
sampler/learner importance correction); no value model, entropy bonus or (by default) KL, as in
the official code; the official code's defaults everywhere, the paper text's variants one flag away
(see `Args`).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import hashlib
import inspect
import json
import math
import logging
import os
import random
import re
import shutil
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import answers
import data
import dist
import eval as evaluation
import gad as gad_lib
import grpo
import rubric
import sampler as sampler_lib
import teacher as teacher_lib
import toy
import track
from data import UserError, as_chat

METHODS = ("ropd", "lopd", "exopd", "tjudge", "ovd", "gad", "sft", "grpo")
USES_REFERENCES = ("ropd", "gad", "sft")


@dataclass
class Args:
    """Defaults are the official ROPD code's settings; the paper-text variants are one flag away
    (--adv-scale std, --agg seq-mean-token-mean, --kl-beta, --schedule cosine, --betas 0.9 0.95,
    --weight-decay 0.1, --warmup-steps 100). With the toy student, TOY_PRESET replaces the
    defaults the user did not set."""
    method: str = "ropd"
    """ropd, or a baseline (§3.1): lopd / exopd (teacher log-probs, white-box), tjudge / ovd
    (a holistic teacher score in [0, 1] / 0-9), gad (a discriminator of teacher vs student answers
    is the reward), sft (fine-tune on the references), grpo (outcome reward from the data's answers)"""
    preset: str | None = None
    """official: every setting of the official config; paper: the paper's (Table A2, Alg. 1, App. D);
    flags given explicitly still win (see the list at the end of --help)"""
    student: str = "toy"
    """the policy pi_theta: 'toy', 'smollm2', a local folder or a hub name"""
    teacher: str = "toy"
    """the teacher pi_T: openai:MODEL[@URL], anthropic:MODEL[@URL], hf:PATH, toy[:WORLD_DIR]"""
    judge: str | None = None
    """the model that plays rubricator, verifier and T-Judge (default: the teacher itself)"""
    config: str | None = None
    """a TOML or JSON file of settings by their field names (a run's args.json is one); flags
    given on the command line override it"""
    data: str = "toy"
    """training prompts: 'toy', a JSONL file, rg:TASK[,TASK...][:N] (reasoning-gym) or
    hf:NAME[:CONFIG][:SPLIT] (a Hugging Face dataset: a hub name, a local folder or a parquet/JSON file)"""
    prompt_field: str = ""
    """the prompt's field in a data row, a dotted path into nested rows; a string or chat messages
    (unset: prompt, question or problem)"""
    answer_field: str = ""
    """the answer's field in a data row, a dotted path (DAPO-Math: reward_model.ground_truth; unset:
    answer, or the last \\boxed{} of a solution)"""
    toy_world: str | None = None
    """(--world) the toy world: a name (default, mimicry, xtok, imperfect; README "Worlds"), built once and
    cached under ~/.cache/ropd/toy, or a world's folder; with it, --teacher toy is that world's teacher"""
    eval_data: str | None = None
    """held-out JSONL with answers (default: the held-out split of toy or rg: data; else none)"""
    out: str = "runs/ropd"
    """the run folder: metrics.jsonl, samples.jsonl, summary.json, checkpoint-NNNNNN/"""
    resume: str | None = None
    """continue a run: its folder or one of its checkpoint folders"""
    seed: int = 0
    """seeds sampling (per step), the data order (per epoch) and the update order"""
    steps: int = 200
    """training steps (one batch of prompts each)"""
    prompts_per_step: int = 32
    """prompts per step (the batch size B)"""
    rollouts: int = 8
    """G, rollouts per prompt (the group)"""
    references: int = 4
    """K (the paper's m), teacher answers per prompt"""
    min_references: int = 0
    """a group with fewer teacher answers falls back (0: K, as the official code)"""
    new_references: bool = False
    """pay for new references where the cache's teacher index holds some made with other settings"""
    mini_batches: int = 4
    """optimizer steps per pass over a step's batch (whole groups per mini-batch)"""
    epochs: int = 1
    """passes over each step's batch"""
    micro_batch: int = 0
    """rollouts per forward/backward (0: a whole mini-batch); the gradient does not depend on it,
    except with --agg micro-token-mean (official: 2)"""
    lr: float = 1e-6
    """AdamW learning rate"""
    schedule: str = "constant"
    """learning-rate schedule: constant (code) or cosine (paper text)"""
    warmup_steps: int = 0
    """linear warm-up steps, either schedule (paper text: 100)"""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas (paper text: 0.9 0.95)"""
    weight_decay: float = 0.01
    """AdamW weight decay (paper text: 0.1)"""
    grad_clip: float = 1.0
    """gradient-norm clip per optimizer step"""
    clip_low: float = 0.2
    """epsilon_low of the clipped ratio (Eq. 8)"""
    clip_high: float = 0.28
    """epsilon_high of the clipped ratio (Eq. 8)"""
    clip_c: float = 3.0
    """dual clip for negative advantages (0: off)"""
    adv_scale: str = "none"
    """none: A = s - mean (code); std: (s - mean) / sqrt(var + eps) (Alg. 1 line 20); eq6:
    (s - mean) / (std + eps) (Eq. 6)"""
    agg: str = "token-mean"
    """loss aggregation: token-mean (micro-batch-invariant), micro-token-mean (the official code's:
    token-mean per micro-batch of --micro-batch rollouts, averaged), seq-mean-token-mean (Eq. 8),
    seq-mean-token-sum-norm (Dr. GRPO)"""
    ratio: str = "token"
    """importance ratio: token (code, Eqs. 7-8) or sequence (one per rollout, Alg. 1 line 25)"""
    kl_beta: float = 0.0
    """k3 KL to the initial student (paper text names it without a value; code: none)"""
    exopd_lambda: float = 1.25
    """ExOPD's reward-extrapolation factor lambda (1: LOPD; 1.25: its authors' script)"""
    gad_lr: float = 0.0
    """GAD's discriminator learning rate (0: the student's --lr)"""
    max_new_tokens: int = 8192
    """rollout length limit"""
    max_prompt_tokens: int = 2048
    """drop training prompts longer than this many tokens, before any teacher call, and say how
    many (the official code's filter; 0: keep all)"""
    temperature: float = 1.0
    """rollout sampling temperature"""
    top_p: float = 1.0
    """rollout nucleus sampling"""
    enable_thinking: bool = False
    """the chat template's thinking switch (Qwen3): off, as the paper's non-thinking runs"""
    teacher_temperature: float | None = None
    """reference sampling temperature (unset: not sent, as the official code with a reasoning
    model; paper: 0.0)"""
    teacher_max_tokens: int = 8192
    """reference length limit"""
    rubricator_temperature: float | None = None
    """rubricator temperature (unset: not sent, as the official code; paper: 0.7)"""
    verifier_temperature: float | None = None
    """verifier temperature (unset: not sent, as the official code; paper: 0.0)"""
    judge_temperature: float | None = None
    """T-Judge / OVD scorer temperature (unset: not sent)"""
    judge_max_tokens: int = 8192
    """T-Judge / OVD output length limit"""
    rubricator_max_tokens: int = 8192
    """rubricator output length limit (official: 8192)"""
    verifier_max_tokens: int = 4096
    """verifier output length limit (official: 4096)"""
    judge_json_mode: bool = False
    """ask the judge API for structured output: the strict JSON schema on OpenAI's API,
    response_format json_object on OpenAI-compatible servers (the official code does)"""
    judge_reasoning_effort: str | None = None
    """reasoning_effort for a reasoning judge (the official code: high)"""
    rubric_prompt: str = "official"
    """official (the official code's rubricator) or paper (App. D's multi-teacher rubricator)"""
    verifier: str = "batch"
    """batch (one blind call per prompt, official) or per-response (one call per answer, App. D)"""
    per_rollout_rubrics: bool = False
    """Table 6 "w/o sharing": one rubric per (references, rollout) pair instead of one per group"""
    sighted_verifier: bool = False
    """Table 6 "w/o blind scoring": the verifier is told which answers are the teacher's"""
    pool_references: bool = True
    """keep the references in the verifier's pool (--no-pool-references: the rollouts alone)"""
    judge_retries: int = 2
    """re-asks of a judge output that does not parse, before the group falls back"""
    judge_retry_policy: str = "uniform"
    """uniform: --judge-retries re-asks for any failure; official: the official per-stage counts
    (rubricator: schema 2, validation 2, else 0; verifier: parse 1, schema 1, empty 3, a failed
    request 1, validation 0)"""
    reward: str = "pass-rate"
    """pass-rate: Eq. 4 recomputed from the verifier's booleans; final-score: the verifier's own
    total / the rubric's maximum (the official code's reward)"""
    min_criteria: int = 4
    """fewest rubric criteria accepted"""
    max_criteria: int = 12
    """most rubric criteria accepted"""
    verifier_chunk: int = 0
    """answers per verifier call (0: the whole pool of K + G in one call)"""
    rubricator_instructions: str = ""
    """extra rules appended to the rubricator prompt"""
    verifier_instructions: str = ""
    """extra rules appended to the verifier prompt"""
    max_fallback_rate: float = 0.4
    """stop when more than this fraction of a step's groups fell back"""
    concurrency: int = 16
    """teacher/judge requests in flight"""
    rpm: float = 0.0
    """teacher/judge requests per minute (0: no limit)"""
    request_timeout: float = 600.0
    """seconds a whole request of another role (T-Judge, OVD, log-probs) may take, first byte sent to last byte
    received, before it is retried (a server that trickles its reply is cut off too)"""
    teacher_timeout: float = 90.0
    """seconds before a reference request is retried (official: 90)"""
    rubricator_timeout: float = 120.0
    """seconds before a rubricator request is retried (official: 120)"""
    verifier_timeout: float = 60.0
    """seconds before a verifier request is retried (official: 60)"""
    max_reply_bytes: int = 64 << 20
    """largest teacher/judge reply read, in bytes; a bigger one is cut off and retried like a 5xx"""
    cache: str | None = None
    """teacher/judge cache (default ~/.cache/ropd/teacher_cache.sqlite): nothing is paid twice"""
    save_every: int = 50
    """checkpoint every N steps (and at the end)"""
    keep_last: int = 0
    """checkpoints to keep (0: all)"""
    eval_every: int = 0
    """held-out greedy accuracy every N steps (0: only before and after)"""
    eval_samples: int = 200
    """held-out problems"""
    eval_max_new_tokens: int = 0
    """length limit for held-out answers (0: max_new_tokens)"""
    grad_checkpointing: bool = False
    """trade compute for activation memory"""
    static_cache: bool = False
    """generate rollouts with a static KV cache (compiled by transformers on a GPU)"""
    sampler: str = "hf"
    """who samples the rollouts: hf (the policy's own generate) or vllm (a vLLM engine in each process, sampler.py)"""
    tis_cap: float = 2.0
    """--sampler vllm: each token's loss weighs min(pi_old / pi_vllm, C), the official correction (0: off)"""
    vllm_gpu_memory_utilization: float = 0.3
    """--sampler vllm on a GPU: the share of its memory for vLLM's weights and KV cache"""
    vllm_kv_cache_gb: int = 4
    """--sampler vllm on a CPU: vLLM's KV cache, in GiB (a whole number)"""
    device: str = "auto"
    """cuda, cpu, or auto (the GPU if there is one)"""
    log_samples: int = 4
    """prompts per step written to samples.jsonl with their rubric and judgements (-1: all)"""
    report_to: str = "none"
    """experiment trackers beside metrics.jsonl, comma-separated: none, tensorboard, wandb, trackio
    (each an optional extra; a table of sampled rollouts every --save-every steps)"""
    lora_rank: int = 0
    """train LoRA adapters of this rank instead of every weight (peft; 0: full fine-tuning)"""
    lora_alpha: float = 0.0
    """LoRA's scale numerator (0: twice the rank)"""
    lora_dropout: float = 0.0
    """dropout on the LoRA path"""
    lora_target_modules: str = "all-linear"
    """the modules that get adapters: all-linear (every linear layer but the head) or comma-separated names"""
    overwrite: bool = False
    """replace the run already in --out (its logs and checkpoints); without it such a run is refused"""
    override_saved: bool = False
    """with --resume, let the flags given change the run's saved settings (each change is logged);
    without it a flag that contradicts them is refused"""


# The toy world's student is tiny: short completions, a larger learning rate with a warm-up (the
# first Adam steps move every weight by ~lr), 16 prompts per step; 60 steps are enough for it to
# learn to show its work (README, "The default run").
TOY_PRESET = dict(steps=60, prompts_per_step=16, mini_batches=2, lr=1e-4, warmup_steps=10,
                  **toy.GENERATION, eval_every=10, save_every=20)


# --preset: every setting of the official config, or of the paper (Table A2; Alg. 1; App. D's
# prompts). Flags the user gives still win. The official code's judge asks for reasoning effort
# and structured output: set only where the judge is an OpenAI(-compatible) API (OPENAI_ONLY).
PRESETS = {
    "official": dict(steps=500, prompts_per_step=32, rollouts=8, references=4, mini_batches=4, epochs=1, lr=1e-6,
                     schedule="constant", warmup_steps=0, betas=(0.9, 0.999), weight_decay=0.01, grad_clip=1.0,
                     clip_low=0.2, clip_high=0.28, clip_c=3.0, adv_scale="none", agg="micro-token-mean",
                     micro_batch=2, ratio="token", kl_beta=0.0, max_new_tokens=8192, temperature=1.0, top_p=1.0,
                     rubric_prompt="official", verifier="batch", reward="final-score", judge_retry_policy="official",
                     rubricator_max_tokens=8192, verifier_max_tokens=4096, teacher_timeout=90.0,
                     rubricator_timeout=120.0, verifier_timeout=60.0, concurrency=32, rpm=1920.0,
                     judge_reasoning_effort="high", judge_json_mode=True),
    "paper": dict(steps=531, prompts_per_step=32, rollouts=8, references=4, mini_batches=1, epochs=1, lr=1e-6,
                  schedule="cosine", warmup_steps=100, betas=(0.9, 0.95), weight_decay=0.1, grad_clip=1.0,
                  adv_scale="std", agg="seq-mean-token-mean", ratio="token", max_new_tokens=8192, temperature=1.0,
                  teacher_temperature=0.0, rubricator_temperature=0.7, verifier_temperature=0.0,
                  rubric_prompt="paper", verifier="per-response", reward="pass-rate"),
}
OPENAI_ONLY = ("judge_reasoning_effort", "judge_json_mode")


# ----------------------------------------------------------------------------------------------
# Algorithm 1, one function per step
# ----------------------------------------------------------------------------------------------

def sample_rollouts(model, tok, prompts: list, *, sampling: grpo.SamplingConfig, seed: int, step: int,
                    template_kwargs: dict, world: dist.World = dist.World(), ref_model=None,
                    need_old: bool = True, micro_batch: int = 0, engine: sampler_lib.Engine | None = None
                    ) -> grpo.Rollouts:
    """§2.1: G rollouts y_i ~ pi_theta_old(. | x) per prompt, and their log-probs under
    pi_theta_old (Eq. 7's denominator) and under the initial student (KL, ExOPD), both at the
    sampling temperature. Each rank samples its slice of the prompts; every rollout has its own
    seed (seed, step, prompt, j), so it is the same on any number of ranks and after a resume.
    With a vLLM `engine` (--sampler vllm) the engine samples, its weights first replaced by the
    policy's, and the rollouts carry its own log-probs too (the sampler correction, grpo.tis_weights).
    Returns the whole step's batch on every rank."""
    mine, G = dist.my_slice(len(prompts), world), sampling.group_size
    seeds = [rollout_seed(seed, step, i, j) for i in range(len(prompts))[mine] for j in range(G)]
    how = dict(n=G, max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
               chat_template_kwargs=template_kwargs, row_seeds=seeds)
    chats = [as_chat(p) for p in prompts[mine]]
    if engine is None:
        ro = grpo.sample(model, tok, chats, static_cache=sampling.static_cache, **how)
    else:
        sampler_lib.load_policy_weights(engine, model)
        ro = sampler_lib.sample(engine, tok, chats, eos=grpo.eos_ids(tok, dist.unwrap(model)), **how)
        sampler_lib.sleep(engine)  # (on a GPU: its memory is the update's until the next weight load)
    ro = dataclasses.replace(ro, prompt_ids=ro.prompt_ids.cpu(), prompt_mask=ro.prompt_mask.cpu(),
                             completion_ids=ro.completion_ids.cpu(), completion_mask=ro.completion_mask.cpu())
    at = dict(temperature=sampling.temperature, micro_batch=micro_batch, device=world.device)
    ro = dataclasses.replace(ro, old_logp=old_logprobs(model, ro, **at) if need_old else None,
                             ref_logp=None if ref_model is None else reference_logprobs(ref_model, ro, **at))
    return grpo.concat_rollouts(dist.gather(ro, world), grpo.pad_id(tok))


def rollout_seed(seed: int, step: int, prompt: int, j: int) -> int:
    """Rollout j of the step's prompt number `prompt`: its own sampling seed."""
    return int(hashlib.sha256(f"{seed}/{step}/{prompt}/{j}".encode()).hexdigest()[:15], 16)


def old_logprobs(model, ro: grpo.Rollouts, *, temperature: float, micro_batch: int, device) -> torch.Tensor:
    """Eq. 7's denominator: log pi_theta_old(y_t | x, y_<t) of every sampled token, recorded
    before any update of this step, at the sampling temperature."""
    return grpo.batched_logprobs(model, ro.input_ids, ro.attention_mask, ro.completion_mask,
                                 temperature=temperature, micro_batch=micro_batch, device=device)


def reference_logprobs(ref_model, ro: grpo.Rollouts, **at) -> torch.Tensor:
    """log pi_ref (KL, ExOPD) of every sampled token: the initial student, a frozen copy or (with
    LoRA) the student with its adapters switched off."""
    if is_lora(ref_model):
        with ref_model.disable_adapter():
            return old_logprobs(ref_model, ro, **at)
    return old_logprobs(ref_model, ro, **at)


def get_references(teacher, prompts: list, *, k: int, temperature: float | None, max_tokens: int,
                   new_settings: bool = False) -> list[list[str]]:
    """Eq. 1: K teacher answers per prompt (see teacher.references: cached, so paid once)."""
    return teacher_lib.references(teacher, [as_chat(p) for p in prompts], k=k, temperature=temperature,
                                  max_tokens=max_tokens, new_settings=new_settings)


@dataclass
class Rewards:
    """What a reward function returns for B prompts x G rollouts (rows i*G .. i*G+G-1 answer
    prompt i)."""
    scores: torch.Tensor                  # [B*G] the reward s_i (Eq. 4); LOPD: mean token log-ratio, logged only
    fallback: list[str | None]            # per prompt: why its group got no signal, else None
    groups: list[rubric.GroupResult] | None = None  # what the judge did, per prompt (samples.jsonl)
    token_advantages: torch.Tensor | None = None    # [B*G, T] LOPD: A_t = log pi_T - log pi_theta_old
    stats: dict | None = None                       # what the reward function reports (GAD: its loss)


# A reward function: reward(rows, rollouts, references) -> Rewards. ROPD's is one; each baseline's
# is another with the same signature (the settings are bound first, see reward_function).
RewardFn = Callable[[list, grpo.Rollouts, "list[list[str]] | None"], Rewards]


def judged_reward(rows, ro: grpo.Rollouts, references, *, score_groups) -> Rewards:
    """A reward from a judge: `score_groups` is rubric.ropd_reward (ROPD: rubric induction, blind
    verification, weighted pass rates; Eqs. 2-4) or a baseline's judge (rubric.tjudge_reward,
    rubric.ovd_reward)."""
    results = score_groups(data.judge_groups(rows, ro.texts, ro.group_size, references))
    return Rewards(scores=torch.tensor([x for res in results for x in res.rewards]),
                   fallback=[res.fallback for res in results], groups=results)


def outcome_reward(rows, ro: grpo.Rollouts, references=None) -> Rewards:
    """The outcome-reward baseline (plain GRPO on verifiable answers; not one of §3.1's): 1 if the
    rollout states a final answer (boxed, or an answer line) and it is the data's answer. Strict:
    a completion cut off before its answer ("2+4=6\n6-6=0\n0+7=") earns nothing, though the
    last number in it may happen to be right."""
    G = ro.group_size
    scores = [float(answers.row_correct(x, rows[i // G], strict=True)) for i, x in enumerate(ro.texts)]
    return Rewards(scores=torch.tensor(scores), fallback=[None] * len(rows))


def lopd_reward(rows, ro: grpo.Rollouts, references=None, *, teacher, temperature: float) -> Rewards:
    """The logit-based baseline (LOPD, §3.1): the white-box teacher scores the student's own
    tokens at the sampling temperature; the per-token advantage is log pi_T(y_t) -
    log pi_theta_old(y_t), a one-sample estimate of the negative reverse KL (grpo.lopd_advantages)."""
    T = ro.completion_ids.shape[1]
    teacher_logp = teacher.token_logprobs(ro.input_ids, ro.attention_mask, T, temperature=temperature)
    adv = grpo.lopd_advantages(teacher_logp, ro.old_logp, ro.completion_mask)
    mean_log_ratio = (adv.sum(1) / ro.lengths.clamp(min=1)).float()
    return Rewards(scores=mean_log_ratio, fallback=[None] * len(rows), token_advantages=adv)


def exopd_reward(rows, ro: grpo.Rollouts, references=None, *, teacher, temperature: float, lam: float) -> Rewards:
    """The ExOPD baseline (§3.1): LOPD with the teacher's log-ratio reward extrapolated by lam
    (grpo.exopd_advantages); pi_ref is the initial student, whose log-probs the rollouts carry."""
    T = ro.completion_ids.shape[1]
    teacher_logp = teacher.token_logprobs(ro.input_ids, ro.attention_mask, T, temperature=temperature)
    adv = grpo.exopd_advantages(teacher_logp, ro.old_logp, ro.ref_logp, ro.completion_mask, lam=lam)
    log_ratio = grpo.lopd_advantages(teacher_logp, ro.old_logp, ro.completion_mask)  # logged, as LOPD's reward
    return Rewards(scores=(log_ratio.sum(1) / ro.lengths.clamp(min=1)).float(), fallback=[None] * len(rows),
                   token_advantages=adv)


def gad_reward(rows, ro: grpo.Rollouts, references, *, disc: gad_lib.GAD) -> Rewards:
    """The GAD baseline (§3.1; Ye et al., arXiv 2511.10643): the discriminator's score D(x, y) of
    each rollout is its reward; then one discriminator update on the step's teacher references
    (preferred) vs rollouts (gad.bradley_terry). A prompt without references gets no signal."""
    G = ro.group_size
    chats = [as_chat(row["prompt"]) for row in rows]
    scores = disc.scores([chats[i // G] for i in range(len(ro.texts))], ro.texts).float().cpu()
    refs = [rubric.dedupe([x for x in rs if isinstance(x, str)]) for rs in references]
    stats = disc.update(chats, refs, [ro.texts[i * G:(i + 1) * G] for i in range(len(rows))])
    return Rewards(scores=scores, fallback=[None if rs else "no references" for rs in refs], stats=stats)


def apply_failure_policy(fallback: list[str | None], groups, *, max_rate: float, where: str = "") -> int:
    """The official code's failure policy (the paper describes none): a group whose judging failed
    (or that has no references) gets no signal, so compute_advantages gives it zero advantage. Too
    many such groups in one step means the judge is broken, and training on the rest would be
    training on noise: stop (the last checkpoint stays). The official config names a 40% limit
    that its code never checks; here it is checked. Returns the number of groups that fell back."""
    failed = [i for i, why in enumerate(fallback) if why]
    if len(failed) > max_rate * len(fallback):
        reasons = sorted({fallback[i] for i in failed})
        first = next((e for i in failed for e in (groups[i].format_errors if groups else [])), "")
        raise UserError(f"{where}: {len(failed)}/{len(fallback)} groups fell back ({', '.join(reasons)}), "
                        f"above --max-fallback-rate {max_rate}; stopping" + (f". First error: {first}" if first else ""))
    return len(failed)


def compute_advantages(rewards: Rewards, G: int, *, scale: str) -> torch.Tensor:
    """Eq. 6 (Alg. 1 line 20): A_i = s_i - mean of its group, broadcast to every token of rollout
    i (official code; scale="std" divides by the group std, the paper's text); a group that fell
    back gets 0. LOPD brings its own per-token advantages."""
    if rewards.token_advantages is not None:
        return rewards.token_advantages
    adv = grpo.group_advantages(rewards.scores, G, scale=scale).view(-1, G)
    adv[torch.tensor([why is not None for why in rewards.fallback], dtype=torch.bool)] = 0.0
    return adv.view(-1)


def sft_step(model, opt, tok, prompts: list, references: list[list[str]], *, max_new_tokens: int,
             update: grpo.UpdateConfig, seed: int, world: dist.World, template_kwargs: dict) -> dict:
    """The SFT baseline (§3.1): off-policy, so no rollouts and no reward: one pass (whatever
    `update.epochs`) of token-mean NLL on the teacher's references, in `update.mini_batches`
    optimizer steps."""
    pairs = [(p, x) for p, rs in zip(prompts, references) for x in rubric.dedupe([r for r in rs if isinstance(r, str)])]
    if not pairs:
        raise UserError("no teacher references at all in this step; cannot fine-tune")
    p_ids, p_mask = grpo.encode_prompts(tok, [as_chat(p) for p, _ in pairs], template_kwargs)
    c_ids, c_mask = grpo.encode_completions(tok, [x for _, x in pairs], max_new_tokens)
    batch = grpo.Batch(input_ids=torch.cat([p_ids, c_ids], 1), attention_mask=torch.cat([p_mask, c_mask], 1),
                       completion_mask=c_mask, old_logp=torch.zeros(c_mask.shape), advantages=torch.zeros(len(pairs)))
    stats = grpo.sft_update(model, opt, batch, seed=seed, update=dataclasses.replace(update, epochs=1),
                            device=world.device, rank=world.rank, world_size=world.size,
                            sum_stats=functools.partial(dist.sum_stats, world=world))
    return {**stats, "references": len(pairs), "fallbacks": sum(not any(isinstance(r, str) for r in rs) for rs in references)}


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------

def train(args: Args, log=print) -> dict:
    """Algorithm 1: for each step, a batch of prompts -> rollouts -> references -> rewards ->
    advantages -> clipped updates; then logs, held-out accuracy and checkpoints. Returns the
    run's summary (accuracy before/after, paths). Under torchrun the same loop runs on every
    rank (dist.py: FSDP2; the teacher and the judge on rank 0)."""
    check_args(args)
    run = setup_run(args, log)
    model, tok, opt, world, log = run.model, run.tok, run.opt, run.world, log if run.world.main else (lambda *x: None)
    template = {"enable_thinking": args.enable_thinking}
    sampling, loss, update = sampling_config(args), loss_config(args), update_config(args)
    one_update = args.mini_batches == 1 and args.epochs == 1 and args.method not in ("lopd", "exopd") and not run.engine
    acc_before = held_out_accuracy(model, tok, run.eval_rows, args, world)
    log(run_banner(args, run, acc_before))
    bar = progress(args.method, start=run.start_step, total=args.steps, show=world.main)
    for step in bar:
        clock = Clock()
        lr = grpo.learning_rate(step, args.steps, base_lr=args.lr, schedule=args.schedule, warmup=args.warmup_steps)
        for g in opt.param_groups:
            g["lr"] = lr
        rows, run.data_pos = data.next_batch(run.train_rows, run.data_pos, size=args.prompts_per_step, seed=args.seed)
        prompts = [row["prompt"] for row in rows]
        step_seed = args.seed * 1_000_003 + step  # the update order is a function of (seed, step): exact resume
        usage_before = usage_of(run.teacher, run.judge)
        m: dict = {"step": step + 1, "lr": lr}
        refs = None
        if args.method in USES_REFERENCES:
            refs = dist.on_main(lambda: get_references(
                run.teacher, prompts, k=args.references, temperature=args.teacher_temperature,
                max_tokens=args.teacher_max_tokens, new_settings=args.new_references), world)
            clock.lap("references")
        if args.method == "sft":  # the off-policy baseline: the references are its training data
            m.update(sft_step(model, opt, tok, prompts, refs, max_new_tokens=args.max_new_tokens, update=update,
                              seed=step_seed, world=world, template_kwargs=template))
            clock.lap("update")
            samples = [{"step": step + 1, "prompt": p, "references": logged(rs)} for p, rs in zip(prompts, refs)]
        else:
            ro = sample_rollouts(model, tok, prompts, sampling=sampling, seed=args.seed, step=step,
                                 template_kwargs=template, world=world, ref_model=run.ref_model,
                                 need_old=not one_update, micro_batch=args.micro_batch, engine=run.engine)
            clock.lap("rollouts")
            rewards = dist.on_main(lambda: run.reward(rows, ro, refs), world)
            clock.lap("judge")
            m["fallbacks"] = apply_failure_policy(rewards.fallback, rewards.groups, max_rate=args.max_fallback_rate,
                                                  where=f"step {step + 1} (last checkpoint: {run.last_ckpt or 'none'})")
            adv = compute_advantages(rewards, args.rollouts, scale=args.adv_scale)
            batch = grpo.Batch(input_ids=ro.input_ids, attention_mask=ro.attention_mask,
                               completion_mask=ro.completion_mask, old_logp=ro.old_logp, advantages=adv,
                               ref_logp=ro.ref_logp, sampler_logp=ro.sampler_logp)
            m.update(grpo.update_policy(model, opt, batch, group_size=args.rollouts, seed=step_seed, loss=loss,
                                        update=update, device=world.device, temperature=sampling.temperature,
                                        rank=world.rank, world_size=world.size,
                                        sum_stats=functools.partial(dist.sum_stats, world=world)))
            clock.lap("update")
            m.update(rollout_metrics(rows, ro, rewards, refs, with_accuracy=args.method not in ("lopd", "exopd")))
            samples = sample_records(rows, ro, rewards, refs, step=step + 1, n=args.log_samples, advantages=adv)
        m["seconds"] = clock.seconds()
        if run.teacher is not None:
            m["usage"] = usage_delta(usage_before, usage_of(run.teacher, run.judge))
        if args.eval_every and (step + 1) % args.eval_every == 0 and run.eval_rows and step + 1 < args.steps:
            m["eval_accuracy"] = held_out_accuracy(model, tok, run.eval_rows, args, world)
        table = (step + 1) % args.save_every == 0 or step + 1 == args.steps  # the trackers' samples table
        write_logs(run, m, samples, bar, table=table) if world.main else None
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            run.last_ckpt = save_checkpoint(run.out, model, tok, opt, step=step + 1, data_pos=run.data_pos,
                                            run_args=dataclasses.asdict(args), keep_last=args.keep_last, world=world,
                                            extra=run.gad.save if run.gad else None)
    bar.close()
    return finish_run(args, run, acc_before, log)


# ----------------------------------------------------------------------------------------------
# Plumbing: set-up, logs, checkpoints (nothing here is the method)
# ----------------------------------------------------------------------------------------------

POSITIVE = ("steps", "prompts_per_step", "rollouts", "references", "mini_batches", "epochs", "max_new_tokens",
            "teacher_max_tokens", "judge_max_tokens", "rubricator_max_tokens", "verifier_max_tokens", "save_every",
            "concurrency", "lr", "grad_clip", "request_timeout", "teacher_timeout", "rubricator_timeout",
            "verifier_timeout", "temperature", "top_p", "exopd_lambda", "min_criteria", "max_reply_bytes",
            "vllm_kv_cache_gb")
NON_NEGATIVE = ("micro_batch", "warmup_steps", "judge_retries", "verifier_chunk", "min_references", "keep_last", "gad_lr",
                "eval_every", "eval_samples", "eval_max_new_tokens", "max_prompt_tokens", "rpm", "weight_decay",
                "kl_beta", "clip_low",
                "clip_high", "clip_c", "teacher_temperature", "rubricator_temperature", "verifier_temperature",
                "judge_temperature", "lora_rank", "lora_alpha", "lora_dropout", "tis_cap")


def check_args(args: Args):
    """Refuse, in one line, any setting that cannot work, before anything is loaded or paid for:
    sizes that would train nothing, maths that is undefined (a temperature of 0 divides the
    log-probs by zero), files that are not there, a run folder that already holds a run."""
    flag = lambda name: FLAGS.get(name, "--" + name.replace("_", "-"))  # noqa: E731
    for name in POSITIVE + NON_NEGATIVE:
        v = getattr(args, name)
        if v is not None and not (math.isfinite(v) and (v > 0 if name in POSITIVE else v >= 0)):
            raise UserError(f"{flag(name)} must be {'positive' if name in POSITIVE else 'at least 0'}, got {v}"
                            + ("; sampling must be stochastic to be trained on" if name == "temperature" else ""))
    checks = [
        (args.top_p <= 1, f"--top-p must be in (0, 1], got {args.top_p}"),
        (all(0 <= b < 1 for b in args.betas), f"--betas must be in [0, 1), got {args.betas}"),
        (args.clip_low < 1, f"--clip-low must be below 1, got {args.clip_low}"),
        (args.clip_c == 0 or args.clip_c > 1, f"--clip-c must be 0 (off) or above 1, got {args.clip_c}"),
        (0 <= args.max_fallback_rate <= 1, f"--max-fallback-rate must be in [0, 1], got {args.max_fallback_rate}"),
        (args.min_criteria <= args.max_criteria, f"--min-criteria {args.min_criteria} is above --max-criteria {args.max_criteria}"),
        (args.log_samples >= -1, f"--log-samples must be -1 (all) or more, got {args.log_samples}"),
        (args.rollouts >= 2 or args.method in ("lopd", "exopd", "sft"),
         f"--rollouts {args.rollouts}: a group of one rollout has zero advantage and teaches nothing"),
        (not (args.resume and args.overwrite), "--resume and --overwrite contradict each other"),
        (args.prompts_per_step % dist.world_size() == 0,
         f"--prompts-per-step {args.prompts_per_step} does not split evenly over {dist.world_size()} processes"),
        *[(getattr(args, name) in CHOICES[name], f"--{name.replace('_', '-')} must be one of "
           f"{', '.join(map(str, CHOICES[name]))}, got {getattr(args, name)!r}") for name in CHOICES],
        (args.agg != "micro-token-mean" or args.micro_batch > 0, "--agg micro-token-mean weighs each micro-batch of "
         "--micro-batch rollouts alike: give --micro-batch N (the official code: 2)"),
        (args.ratio == "token" or args.method not in ("lopd", "exopd"),
         f"--ratio sequence needs one advantage per rollout; --method {args.method} has one per token"),
        (args.reward == "pass-rate" or args.method == "ropd",
         f"--reward final-score is the ROPD verifier's own total; --method {args.method} has no verifier"),
        (args.method != "gad" or dist.world_size() == 1, "--method gad runs in one process (its discriminator "
         "is not sharded); start it without torchrun"),
        (not args.lora_rank or dist.world_size() == 1, "--lora-rank under torchrun: LoRA is not wired to FSDP2 here "
         "(its adapters would need their own sharding plan); train LoRA in one process, or fully under torchrun"),
        (not args.lora_rank or args.method != "gad", "--lora-rank with --method gad: the discriminator copies the "
         "student's full weights; train GAD without LoRA"),
        (args.lora_dropout < 1, f"--lora-dropout must be below 1, got {args.lora_dropout}"),
        (0 < args.vllm_gpu_memory_utilization <= 1,
         f"--vllm-gpu-memory-utilization must be in (0, 1], got {args.vllm_gpu_memory_utilization}"),
        (args.sampler == "hf" or not args.static_cache, "--static-cache is the hf sampler's KV cache; vLLM has its own "
         "(leave --static-cache off with --sampler vllm)"),
        (args.sampler == "hf" or not args.lora_rank, "--sampler vllm with --lora-rank: the engine is not given "
         "LoRA adapters here; sample LoRA runs with --sampler hf"),
        (args.sampler == "hf" or args.ratio == "token" or not args.tis_cap, "--sampler vllm with --ratio sequence: "
         "the sampler correction is per token; give --tis-cap 0 or --ratio token"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    for spec in filter(None, (args.teacher if args.method != "grpo" else None, args.judge)):
        teacher_lib.check_spec(spec)
    judge_kind = teacher_lib.check_spec(args.judge or args.teacher)[0]
    for used, name in ((args.judge_json_mode, "--judge-json-mode"), (args.judge_reasoning_effort, "--judge-reasoning-effort")):
        if used and judge_kind != "openai":
            raise UserError(f"{name}: the {judge_kind} backend takes no such option; leave it off (it is for "
                            f"OpenAI and OpenAI-compatible servers)")
    try:
        track.check_backends(args.report_to.split(","))
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.lora_rank:
        check_peft()
    if args.sampler == "vllm":
        sampler_lib.check_vllm()
    data.check_model_name(args.student)
    for path, what in ((None if args.data == "toy" or args.data.startswith(("rg:", "hf:")) else args.data, "--data"),
                       (args.eval_data, "--eval-data")):
        if path:
            data.check_file(path, what)
    if args.toy_world and args.toy_world not in toy.WORLDS and not (Path(args.toy_world) / "world.json").is_file():
        raise UserError(f"--world {args.toy_world}: no toy world there (a world's name is one of "
                        f"{', '.join(toy.WORLDS)}; python toy.py --root {args.toy_world} builds one in a folder)")
    if args.cache and Path(args.cache).is_dir():
        raise UserError(f"--cache {args.cache} is a directory; give it a file name")
    data.pick_device(args.device)
    check_out(Path(args.out), args.resume, args.overwrite)


def check_out(out: Path, resume, overwrite: bool):
    """The run folder: writable, and not holding another run's logs unless told (--resume continues
    it, --overwrite replaces it)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if not resume and not overwrite and any((out / f).exists() for f in ("metrics.jsonl", "samples.jsonl", "latest")):
        raise UserError(f"--out {out} holds a run already: --resume {out} continues it, --overwrite replaces it")
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(probe, os.W_OK):
        raise UserError(f"--out {out}: {probe} is not writable")
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 holds the lock for the run
        lock_run(out)


_LOCKS: dict[Path, object] = {}  # run folder -> its open lock file, held until release_run_locks()


def lock_run(out: Path):
    """One run per folder: an exclusive lock on OUT/.lock, held while this process runs (the
    kernel drops it if the process dies). Two runs on one --out would interleave their logs and
    mix one's weights with the other's optimizer; the second is refused, naming the first."""
    import fcntl
    key = out.resolve()
    if key in _LOCKS:
        return
    out.mkdir(parents=True, exist_ok=True)
    fh = open(out / ".lock", "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        fh.close()
        raise UserError(f"--out {out} is in use by another run (process {holder}); wait for it to end, "
                        f"or give another --out") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    _LOCKS[key] = fh


def release_run_locks():
    """Let other runs have the folders this process ran in (main() calls it when the run ends)."""
    while _LOCKS:
        _LOCKS.popitem()[1].close()


@dataclass
class Run:
    """Everything one training run holds (built by setup_run)."""
    out: Path
    model: torch.nn.Module
    tok: object
    opt: torch.optim.Optimizer
    world: dist.World
    train_rows: list[dict]
    eval_rows: list[dict]
    teacher: teacher_lib.Teacher | None  # rank 0 only
    judge: teacher_lib.Teacher | None
    reward: RewardFn | None
    ref_model: torch.nn.Module | None = None
    start_step: int = 0
    data_pos: int = 0
    last_ckpt: Path | None = None
    gad: gad_lib.GAD | None = None  # GAD's discriminator
    trackers: list = dataclasses.field(default_factory=list)  # --report-to, rank 0 only (track.py)
    engine: sampler_lib.Engine | None = None  # --sampler vllm


def setup_run(args: Args, log) -> Run:
    """The process group (if torchrun started several), seeds, data, models, teacher and judge
    (rank 0), optimizer, and the resumed state if any."""
    world = dist.setup(data.pick_device(args.device))
    log = log if world.main else (lambda *x: None)
    ckpt = find_checkpoint(args.resume) if args.resume else None
    state = load_trainer_state(ckpt) if ckpt else None
    if ckpt:
        log(f"resuming from {ckpt} (step {state['step']})")
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    fields = dict(prompt_field=args.prompt_field, answer_field=args.answer_field)
    train_rows = None if args.data == "toy" else data.load_data(args.data, args.seed, **fields)  # bad data fails first
    check_resume_changes(args)  # after the flags' and the data's own checks, before any model is loaded
    toy_world = dist.on_main(lambda: toy.load_world(args.toy_world, log=log), world) \
        if "toy" in (args.student, args.data) else None  # --world was checked: no build at a typo's path
    train_rows = train_rows or data.load_data(args.data, args.seed, toy_world, **fields)
    if args.eval_data:
        eval_rows = data.load_jsonl(args.eval_data)[:args.eval_samples]
    elif args.data == "toy" or args.data.startswith("rg:"):
        eval_rows = data.load_data(args.data, args.seed, toy_world, split="test", n=args.eval_samples)
    else:
        eval_rows = []
    if args.method == "grpo" and any(row["answer"] is None for row in train_rows):
        raise UserError("--method grpo needs an 'answer' on every data row")

    model, tok = load_policy(str(ckpt) if ckpt and not args.lora_rank else args.student,
                             grad_checkpointing=args.grad_checkpointing, world=world, toy_world=toy_world)
    if args.lora_rank:
        model = add_lora(model, args, ckpt)
    ref_model = None
    if args.kl_beta > 0 or args.method == "exopd":  # pi_ref, the initial student
        if args.lora_rank:  # the student with its adapters off (reference_logprobs): no second copy
            ref_model = model
        else:
            ref_model, _ = load_policy(args.student, grad_checkpointing=False, world=world, toy_world=toy_world)
            ref_model.eval().requires_grad_(False)
    train_rows = drop_long_prompts(train_rows, tok=tok, max_tokens=args.max_prompt_tokens,
                                   template_kwargs={"enable_thinking": args.enable_thinking}, log=log)
    teacher, judge, reward = (None, None, outcome_reward) if args.method == "grpo" else \
        dist.on_main(lambda: load_judges(args, tok, train_rows), world, share=False) or (None, None, None)
    disc = None
    if args.method == "gad":  # the discriminator starts as a copy of the initial student (or the checkpoint's)
        disc = load_discriminator(args, model, tok, ckpt=ckpt, device=world.device)
        reward = functools.partial(gad_reward, disc=disc)

    engine = None
    if args.sampler == "vllm" and args.method != "sft":  # (SFT samples nothing)
        engine = sampler_lib.start_engine(str(data.model_path(args.student, toy_world)), device=world.device,
                                          seed=args.seed, gpu_memory_utilization=args.vllm_gpu_memory_utilization,
                                          cpu_kv_cache_gb=args.vllm_kv_cache_gb, distributed=world.size > 1,
                                          max_model_len=vllm_context(train_rows, tok, args, model))
    trainable = [p for p in model.parameters() if p.requires_grad]  # (LoRA: the adapters alone)
    opt = torch.optim.AdamW(trainable, lr=args.lr, betas=tuple(args.betas), weight_decay=args.weight_decay)
    if state:
        dist.load_optimizer(model, opt, ckpt / "optimizer", state["optimizer"], world)
        set_rng_state(state["rng"])
    start = state["step"] if state else 0
    out = Path(args.out)
    trackers = []
    if world.main:
        start_logs(out, args, start)
        trackers = track.open_trackers(args.report_to.split(","), out=out, name=out.name, resume_step=start,
                                       config=teacher_lib.redact(dataclasses.asdict(args)))
    dist.barrier(world)
    return Run(out=out, model=model, tok=tok, opt=opt, world=world, train_rows=train_rows, eval_rows=eval_rows,
               teacher=teacher, judge=judge, reward=reward, ref_model=ref_model, start_step=start,
               data_pos=state["data_pos"] if state else 0, last_ckpt=ckpt, gad=disc, trackers=trackers, engine=engine)


def vllm_context(rows: list[dict], tok, args: Args, model) -> int:
    """The context the vLLM engine must hold: the longest training prompt through the chat template
    (--max-prompt-tokens when it is set: the rows were cut to it) and --max-new-tokens, at most the
    model's own limit. (vLLM's default, the model's limit, can be far more than a run needs.)"""
    longest = args.max_prompt_tokens or max(
        len(grpo.encode_chat(tok, as_chat(r["prompt"]), {"enable_thinking": args.enable_thinking})) for r in rows)
    limit = getattr(dist.unwrap(model).config, "max_position_embeddings", None)
    return min(longest + args.max_new_tokens, limit or longest + args.max_new_tokens)


def check_peft():
    try:
        import peft  # noqa: F401 - optional: only --lora-rank needs it
    except ImportError:
        raise UserError("--lora-rank needs peft (pip install peft)") from None


def add_lora(model, args: Args, ckpt: Path | None):
    """--lora-rank: LoRA adapters (peft) on every target module of the student; only they train,
    only they are checkpointed (checkpoint-N/adapter), and a resumed run loads them onto the base."""
    import peft
    if ckpt is not None:
        if not (ckpt / "adapter" / "adapter_config.json").is_file():
            raise UserError(f"--resume {ckpt}: no adapter there (not a LoRA run's checkpoint)")
        return peft.PeftModel.from_pretrained(model, str(ckpt / "adapter"), is_trainable=True)
    targets = args.lora_target_modules
    config = peft.LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha or 2 * args.lora_rank,
                             lora_dropout=args.lora_dropout, task_type="CAUSAL_LM",
                             target_modules=targets if targets == "all-linear" else targets.split(","))
    return peft.get_peft_model(model, config)


def is_lora(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "merge_and_unload")


def load_discriminator(args: Args, model, tok, *, ckpt: Path | None, device) -> gad_lib.GAD:
    """GAD's discriminator (§3.1, Tables 1 and 3): a copy of the initial student with a scalar head,
    or the one a GAD checkpoint kept."""
    disc = gad_lib.GAD(model, tok, args.gad_lr or args.lr, betas=args.betas, weight_decay=args.weight_decay,
                       max_tokens=args.max_new_tokens, template_kwargs={"enable_thinking": args.enable_thinking},
                       device=device)
    if ckpt:
        if not (ckpt / "discriminator.pt").is_file():
            raise UserError(f"--resume {ckpt}: no discriminator.pt there (not a GAD run's checkpoint)")
        disc.load(ckpt)
    return disc


def load_policy(name: str, *, grad_checkpointing: bool, world: dist.World, toy_world):
    """The student (or the initial student, pi_ref), sharded with FSDP2 when there are several ranks."""
    model, tok = data.load_model(name, world.device, toy_world)
    if grad_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = True  # generation still uses the KV cache
    return (dist.shard(model, world) if world.size > 1 else model), tok


def drop_long_prompts(rows: list[dict], *, tok, max_tokens: int, template_kwargs: dict, log) -> list[dict]:
    """The official code's filter: prompts longer than `max_tokens` (as the student's chat template
    encodes them) are dropped before anything is paid for, and the run says how many (0: no filter)."""
    if not max_tokens:
        return rows
    kept = [row for row in rows if len(grpo.encode_chat(tok, as_chat(row["prompt"]), template_kwargs)) <= max_tokens]
    if len(kept) < len(rows):
        log(f"dropped {len(rows) - len(kept)} of {len(rows)} prompts longer than --max-prompt-tokens {max_tokens}")
    if not kept:
        raise UserError(f"every prompt is longer than --max-prompt-tokens {max_tokens} tokens; raise it")
    return kept


def load_judges(args: Args, tok, train_rows: list[dict]):
    """(teacher, judge, reward function) on rank 0, with the run's cache and transport settings;
    the teacher index is checked for every prompt of the run before the first paid call."""
    in_world = lambda spec: f"toy:{args.toy_world}" if spec == "toy" and args.toy_world else spec  # noqa: E731
    timeouts = {"reference": args.teacher_timeout, "rubricator": args.rubricator_timeout,
                "verifier": args.verifier_timeout}
    teacher, judge = teacher_lib.load_teacher_and_judge(in_world(args.teacher), args.judge and in_world(args.judge),
                                                        cache=args.cache or "default",
                                                        concurrency=args.concurrency, rpm=args.rpm or None, retries=2,
                                                        timeout=args.request_timeout, timeouts=timeouts,
                                                        max_reply_bytes=args.max_reply_bytes)
    if args.method in ("lopd", "exopd"):
        check_lopd_teacher(teacher, tok, spec=args.teacher, temperature=args.temperature, method=args.method)
    if args.method in USES_REFERENCES:
        teacher_lib.check_reference_index(teacher, [as_chat(row["prompt"]) for row in train_rows],
                                          temperature=args.teacher_temperature, max_tokens=args.teacher_max_tokens,
                                          new_settings=args.new_references)
    return teacher, judge, reward_function(args, teacher, judge)


def start_logs(out: Path, args: Args, start: int):
    """The run folder: args.json, and the logs cut back to the resumed step (or emptied, with
    --overwrite, which also removes the old checkpoints)."""
    if args.overwrite:
        for old in [out / "latest", *(own_checkpoints(out) if out.is_dir() else [])]:
            shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)  # a run killed early has no latest
    out.mkdir(parents=True, exist_ok=True)
    (out / "args.json").write_text(json.dumps(teacher_lib.redact(dataclasses.asdict(args)), indent=2))
    truncate_jsonl(out / "metrics.jsonl", start)
    truncate_jsonl(out / "samples.jsonl", start)


def reward_function(args: Args, teacher, judge) -> RewardFn | None:
    """The method's reward function, with its settings bound (sft has none)."""
    if args.method in ("lopd", "exopd", "grpo", "sft", "gad"):  # gad's is built with the student (setup_run)
        return {"lopd": functools.partial(lopd_reward, teacher=teacher, temperature=args.temperature),
                "exopd": functools.partial(exopd_reward, teacher=teacher, temperature=args.temperature,
                                           lam=args.exopd_lambda),
                "grpo": outcome_reward, "sft": None, "gad": None}[args.method]
    temperatures = {"rubricator": args.rubricator_temperature, "verifier": args.verifier_temperature,
                    "tjudge": args.judge_temperature, "ovd": args.judge_temperature}
    max_tokens = {"rubricator": args.rubricator_max_tokens, "verifier": args.verifier_max_tokens,
                  "default": args.judge_max_tokens}
    reasks = max(args.judge_retries, *rubric.OFFICIAL_REASKS["verifier"].values()) \
        if args.judge_retry_policy == "official" else args.judge_retries
    complete = judge.as_judge(max_tokens, temperatures=temperatures, json_mode=args.judge_json_mode,
                              reasoning_effort=args.judge_reasoning_effort, retries=reasks)
    score_groups = {"ropd": rubric.ropd_reward, "tjudge": rubric.tjudge_reward, "ovd": rubric.ovd_reward}[args.method]
    return functools.partial(judged_reward, score_groups=functools.partial(score_groups, complete,
                                                                           settings=judge_settings(args)))


def judge_settings(args: Args) -> rubric.JudgeSettings:
    """How the rubricator and the verifier are asked (§2.2, App. D, Table 6), from the flags."""
    return rubric.JudgeSettings(
        retries=args.judge_retries, min_criteria=args.min_criteria, max_criteria=args.max_criteria,
        verifier_chunk=args.verifier_chunk or None, rubricator_instructions=args.rubricator_instructions,
        verifier_instructions=args.verifier_instructions, rubric_prompt=args.rubric_prompt, verifier=args.verifier,
        min_references=args.min_references or args.references, per_rollout_rubrics=args.per_rollout_rubrics,
        sighted_verifier=args.sighted_verifier, pool_references=args.pool_references, reward=args.reward,
        retry_policy=args.judge_retry_policy)


def sampling_config(args: Args) -> grpo.SamplingConfig:
    """How rollouts are sampled (§2.1): G, length, temperature, top-p."""
    return grpo.SamplingConfig(group_size=args.rollouts, max_new_tokens=args.max_new_tokens,
                               temperature=args.temperature, top_p=args.top_p, static_cache=args.static_cache)


def loss_config(args: Args) -> grpo.LossConfig:
    """The clipped objective's settings (Eq. 8, Alg. 1 line 25 with --ratio sequence); --clip-c 0
    turns the dual clip off."""
    return grpo.LossConfig(clip_low=args.clip_low, clip_high=args.clip_high, clip_c=args.clip_c or None,
                           agg=args.agg, kl_beta=args.kl_beta, max_len=args.max_new_tokens, ratio=args.ratio,
                           tis_cap=args.tis_cap)


def update_config(args: Args) -> grpo.UpdateConfig:
    """How a step's batch becomes optimizer steps (Eq. 8, Table A2)."""
    return grpo.UpdateConfig(mini_batches=args.mini_batches, epochs=args.epochs, grad_clip=args.grad_clip,
                             micro_batch=args.micro_batch)


def run_banner(args: Args, run: Run, acc_before: float) -> str:
    """The run's first line: method, models, batch, devices, and the held-out accuracy before."""
    return (f"{args.method}: student {args.student}, " + (f"teacher {args.teacher}, " if run.teacher else "")
            + f"{len(run.train_rows)} prompts, {args.prompts_per_step} x {args.rollouts} rollouts/step, "
            + f"device {run.world.device.type}" + (f" x {run.world.size} processes" if run.world.size > 1 else "")
            + (f"; held-out accuracy {acc_before:.1%}" if run.eval_rows else ""))


def check_lopd_teacher(teacher, tok, *, spec: str, temperature: float, method: str = "lopd"):
    """LOPD (and ExOPD) score the student's own token ids: the teacher must be white-box and share
    the student's tokenizer; a served teacher's prompt log-probs are at temperature 1. `method`
    names the flag in the refusal."""
    if not hasattr(teacher, "token_logprobs"):
        raise UserError(f"--method {method} needs a white-box teacher (hf:PATH, toy, or openai:MODEL@URL "
                        f"served by vLLM, for its prompt log-probs), got {spec!r}")
    if isinstance(teacher, teacher_lib.OpenAITeacher) and temperature != 1.0:
        raise UserError(f"--method {method} with a served teacher needs --temperature 1 (its prompt "
                        "log-probs are at temperature 1)")
    try:
        teacher.check_tokenizer(tok)
    except teacher_lib.TeacherError as e:
        raise UserError(f"--method {method}: {e}") from None


def held_out_accuracy(model, tok, rows, args: Args, world: dist.World = dist.World(), batch: int = 128) -> float:
    """Greedy accuracy on rows with answers (the toy held-out set by default), by eval.evaluate on
    rank 0 (with the weights gathered there); eval.py reports the paper's sampled avg@k and pass@k."""
    if not rows:
        return float("nan")
    with dist.gathered(model):
        return dist.on_main(lambda: evaluation.evaluate(
            model, tok, rows, temperature=0.0, batch=batch, progress=False,
            max_new_tokens=args.eval_max_new_tokens or args.max_new_tokens,
            chat_template_kwargs={"enable_thinking": args.enable_thinking}, n_boot=0)["avg@1"], world)


class Clock:
    """Seconds per phase of a step: lap(name) closes the phase that began at the last lap."""

    def __init__(self):
        self.start = self.last = time.time()
        self.laps: dict[str, float] = {}

    def lap(self, name: str):
        now = time.time()
        self.laps[name] = round(now - self.last, 3)
        self.last = now

    def seconds(self) -> dict:
        return {**self.laps, "total": round(time.time() - self.start, 3)}


def progress(desc: str, *, start: int, total: int, show: bool = True):
    from tqdm import tqdm
    return tqdm(range(start, total), initial=start, total=total, desc=desc, dynamic_ncols=True,
                disable=None if show else True)


def usage_of(teacher, judge) -> dict:
    """Usage per role of the teacher and the judge (one dict: their roles differ)."""
    return {} if teacher is None else {**judge.usage_summary(), **teacher.usage_summary()}


def usage_delta(before: dict, after: dict) -> dict:
    out = {}
    for role, u in after.items():
        b = before.get(role, {})
        d = {k: v - b.get(k, 0) for k, v in u.items() if v - b.get(k, 0)}
        if d:
            out[role] = d
    return out


def rollout_metrics(rows, ro: grpo.Rollouts, rewards: Rewards, refs, with_accuracy: bool) -> dict:
    """What metrics.jsonl says of a step's rollouts and their rewards."""
    lengths, s = ro.lengths.float(), rewards.scores
    m = dict(reward_mean=float(s.mean()), reward_std=float(s.std()) if len(s) > 1 else 0.0,
             completion_len_mean=float(lengths.mean()), completion_len_max=int(lengths.max()),
             truncated_frac=float(ro.truncated.float().mean()))
    m.update(rewards.stats or {})
    if with_accuracy:
        m["accuracy_train"] = float(np.mean([answers.row_correct(x, rows[i // ro.group_size])
                                             for i, x in enumerate(ro.texts)]))
    if refs is not None and rewards.groups:
        results = rewards.groups
        rubrics = [x for res in results for x in res.rubrics]
        ref_scores = [x for res in results for x in res.reference_scores]
        beats = [max(res.rewards) > max(res.reference_scores) for res in results if res.reference_scores]
        # the official diagnostic: the weakest reference scored below the best rollout
        below = [min(res.reference_scores) < max(res.rewards) for res in results if res.reference_scores]
        m.update(teacher_score_mean=float(np.mean(ref_scores)) if ref_scores else None,
                 rubric_criteria=float(np.mean([len(x.criteria) for x in rubrics])) if rubrics else None,
                 rubric_points=float(np.mean([x.maximum_score for x in rubrics])) if rubrics else None,
                 student_beats_references=float(np.mean(beats)) if beats else None,
                 teacher_below_student=float(np.mean(below)) if below else None,
                 references_per_prompt=float(np.mean([len(res.references) for res in results])))
    return m


def sample_records(rows, ro: grpo.Rollouts, rewards: Rewards, refs, *, step: int, n: int,
                   advantages: torch.Tensor | None = None) -> list[dict]:
    """samples.jsonl: the first n prompts of the step (-1: all), with what the judge did and the
    advantage each rollout got (per token, LOPD: its mean over the rollout)."""
    G = ro.group_size
    out = []
    for i in range(len(rows) if n < 0 else min(n, len(rows))):
        res = rewards.groups[i] if rewards.groups else None
        out.append({
            "step": step, "prompt": rows[i]["prompt"], "answer": rows[i]["answer"],
            "references": res.references if res and res.references else logged(refs[i]) if refs else None,
            "rubric": None if not res or not res.rubrics else res.rubric.to_json() if res.rubric
            else [x.to_json() for x in res.rubrics],
            "rollouts": ro.texts[i * G:(i + 1) * G],
            "judgements": res.judgements if res else None,
            "rewards": [round(float(x), 4) for x in rewards.scores[i * G:(i + 1) * G]],
            "advantages": None if advantages is None else [round(float(x), 4) for x in (
                advantages if advantages.dim() == 1 else advantages.sum(1) / ro.lengths.clamp(min=1))[i * G:(i + 1) * G]],
            "reference_scores": res.reference_scores if res else None,
            "fallback": res.fallback if res else None,
            "format_errors": res.format_errors if res else None})
    return out


def logged(references: list) -> list[str]:
    """A prompt's references as samples.jsonl shows them: the texts, and why any are missing."""
    return [x if isinstance(x, str) else f"error: {x}" for x in references]


def write_logs(run: Run, m: dict, samples: list[dict], bar, *, table: bool = False):
    """One metrics line per step, the step's samples; the same to the trackers (--report-to), the
    samples as a table where `table`; everything passes teacher.redact first."""
    m, samples = teacher_lib.redact(m), teacher_lib.redact(samples)
    with open(run.out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(m) + "\n")
    with open(run.out / "samples.jsonl", "a") as f:
        for s in samples:
            f.write(json.dumps(s) + "\n")
    track.log_step(run.trackers, m, samples if table else [])
    shown = {"reward": m.get("reward_mean", m.get("sft_loss")), "fb": m["fallbacks"]}
    if "eval_accuracy" in m:
        shown["acc"] = m["eval_accuracy"]
    bar.set_postfix({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in shown.items()})


def finish_run(args: Args, run: Run, acc_before: float, log) -> dict:
    acc_after = held_out_accuracy(run.model, run.tok, run.eval_rows, args, run.world)
    summary = {"method": args.method, "steps": args.steps, "accuracy_before": acc_before,
               "accuracy_after": acc_after, "out": str(run.out),
               "checkpoint": str(run.last_ckpt) if run.last_ckpt else None,
               "usage": None if run.teacher is None else usage_of(run.teacher, run.judge)}
    if run.world.main and is_lora(run.model) and run.last_ckpt:  # training is over: merge in place, save
        run.model.merge_and_unload().save_pretrained(run.last_ckpt)
        log(f"LoRA: the merged model is in {run.last_ckpt} (AutoModelForCausalLM loads it), the adapters in "
            f"{run.last_ckpt / 'adapter'}")
    if run.world.main:
        (run.out / "summary.json").write_text(json.dumps(summary, indent=2))
        track.close_trackers(run.trackers)
    if run.engine:
        sampler_lib.shutdown(run.engine)
    dist.close(run.world)
    if run.eval_rows:
        log(f"held-out accuracy: {acc_before:.1%} -> {acc_after:.1%} ({len(run.eval_rows)} problems)")
    log(f"checkpoint: {run.last_ckpt}; metrics: {run.out / 'metrics.jsonl'}; samples: {run.out / 'samples.jsonl'}")
    return summary


def rng_state() -> dict:
    """Every RNG's state in plain types (lists, ints, tensors), so that the checkpoint loads with
    torch.load(weights_only=True), which runs no code."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    st = {"python": [version, list(mt), gauss], "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos,
                                                        has_gauss, cached], "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict):
    version, mt, gauss = st["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = st["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_checkpoint(out: Path, model, tok, opt, *, step: int, data_pos: int, run_args: dict, keep_last: int,
                    world: dist.World = dist.World(), extra=None) -> Path:
    """Write then rename: a checkpoint directory either exists whole or not at all. The student is
    in save_pretrained format (AutoModelForCausalLM.from_pretrained loads it), written by rank 0;
    the optimizer state is sharded (dist.save_optimizer, every rank); trainer_state.pt holds
    tensors and plain types only (see load_trainer_state), and no secret."""
    final = out / f"checkpoint-{step:06d}"
    tmp = out / f".tmp-checkpoint-{step:06d}"
    if world.main:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier(world)
    weights = dist.full_state_dict(model, world)
    try:
        if world.main:
            lm = dist.unwrap(model)
            if is_lora(lm):  # the adapters alone (the base is --student); the merged model at the end
                lm.save_pretrained(tmp / "adapter")
            else:
                lm.save_pretrained(tmp, state_dict=weights)
            tok.save_pretrained(tmp)
        rest = dist.save_optimizer(model, opt, tmp / "optimizer", world)
        if world.main:
            torch.save({"step": step, "data_pos": data_pos, "optimizer": rest, "rng": rng_state(),
                        "args": teacher_lib.redact(run_args), "world_size": world.size}, tmp / "trainer_state.pt")
            if extra is not None:  # what else the run keeps (GAD's discriminator), inside the same rename
                extra(tmp)
    except Exception as e:  # noqa: BLE001 - a full disk is an OSError, a RuntimeError (torch.save) or a
        # SafetensorError, as the writer has it: one line, the half-written folder removed
        shutil.rmtree(tmp, ignore_errors=True)
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        last = (out / "latest").read_text().strip() if (out / "latest").is_file() else "none"
        raise UserError(f"step {step}: the checkpoint could not be written to {out} ({why}); the logs are kept, "
                        f"and the last whole checkpoint is {last}") from None
    if world.main:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        (out / "latest.tmp").write_text(final.name)
        os.replace(out / "latest.tmp", out / "latest")
        for old in own_checkpoints(out)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier(world)
    return final


CHECKPOINT_NAME = re.compile(r"checkpoint-\d{6}")


def own_checkpoints(out: Path) -> list[Path]:
    """The run's own checkpoints, oldest first: folders named exactly checkpoint-NNNNNN (--keep-last
    must not delete a user's checkpoint-000001-best)."""
    return sorted(p for p in out.iterdir() if p.is_dir() and CHECKPOINT_NAME.fullmatch(p.name))


def find_checkpoint(path: str) -> Path:
    """A checkpoint folder, or the one a run folder's `latest` names; refused if it is not whole.
    `latest` must name one of the run's own checkpoints by its bare name: a pointer such as
    ../A/checkpoint-000001 would resume, and then write into, another run."""
    p = Path(path)
    if (p / "latest").is_file():
        name = (p / "latest").read_text().strip()
        if not CHECKPOINT_NAME.fullmatch(name):
            raise UserError(f"--resume {path}: its 'latest' names {name[:80]!r}, not one of its own checkpoints "
                            f"(checkpoint-NNNNNN); give the checkpoint folder itself")
        p = p / name
    if not (p / "trainer_state.pt").is_file() or not ((p / "config.json").is_file()
                                                     or (p / "adapter" / "adapter_config.json").is_file()):
        raise UserError(f"--resume {path}: no checkpoint there (it needs trainer_state.pt and the model's files)")
    return p


def load_trainer_state(ckpt: Path) -> dict:
    """The optimizer, RNG and data position of a checkpoint, with weights_only=True: a crafted
    file cannot run code; a torn or foreign one is refused in one line."""
    try:
        return torch.load(ckpt / "trainer_state.pt", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip and weights-only refusals alike
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"--resume {ckpt}: trainer_state.pt cannot be loaded safely ({why[:200]})") from None


def truncate_jsonl(path: Path, max_step: int):
    """On resume, forget log lines of steps after the checkpoint (they will be redone). A torn last
    line (kill -9 mid-write) is dropped; a broken line elsewhere is refused."""
    if not path.exists():
        return
    tmp = path.with_name(path.name + ".tmp")
    # Written to a temporary file, then renamed over the log: an interrupt mid-rewrite leaves the
    # log whole (a rewrite in place emptied a 300 MB samples.jsonl). Streamed, line by line.
    try:
        with open(path, encoding="utf-8", errors="replace") as src, open(tmp, "w", encoding="utf-8") as dst:
            for ln in _log_lines_up_to(src, max_step, path):
                dst.write(ln + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _log_lines_up_to(lines, max_step: int, path: Path):
    """The non-empty log lines of steps up to max_step; a torn last line is dropped, a broken line
    elsewhere refused."""
    broken = None
    for i, ln in enumerate((x.rstrip("\n") for x in lines), 1):
        if not ln.strip():
            continue
        if broken is not None:  # a broken line with more after it: not a torn last line
            raise UserError(f"{path}:{broken} is not a log line; the run's logs are damaged")
        try:
            step = json.loads(ln)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            broken = i
            continue
        if step <= max_step:
            yield ln


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------

def field_docs(cls) -> dict[str, str]:
    """Each dataclass field's docstring (the string under it), as CleanRL and tyro show in --help."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    return {f.target.id: " ".join(d.value.value.split()) for f, d in zip(body, body[1:])
            if isinstance(f, ast.AnnAssign) and isinstance(d, ast.Expr) and isinstance(d.value, ast.Constant)}


CHOICES = {"method": METHODS, "preset": (None, *PRESETS), "schedule": ("constant", "cosine"),
           "adv_scale": grpo.ADV_SCALES, "sampler": ("hf", "vllm"), "agg": grpo.AGGREGATIONS, "ratio": grpo.RATIOS,
           "rubric_prompt": ("official", "paper"), "verifier": ("batch", "per-response"),
           "reward": ("pass-rate", "final-score"), "judge_retry_policy": ("uniform", "official"),
           "judge_reasoning_effort": (None, "minimal", "low", "medium", "high")}
# with --student toy, the toy preset keeps the run toy-sized even under --preset (these keys)
TOY_SCALE = ("steps", "prompts_per_step", "lr", "warmup_steps", "max_new_tokens", "teacher_max_tokens",
             "judge_max_tokens", "eval_every", "save_every")


FLAGS = {"toy_world": "--world"}  # a field whose flag is not its name: --world NAME reads as the README says


def parse_args(argv=None) -> Args:
    """The command line -> Args: one flag per field, its docstring as the help (python ropd.py -h)."""
    def shown(d: dict) -> str:
        return ", ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {' '.join(map(str, v))}"
                                                        if isinstance(v, tuple) else f" {v}") for k, v in d.items())
    toy_scale = [k for k in TOY_PRESET if k in TOY_SCALE]
    notes = [f"--preset {name} sets: {shown(p)}" for name, p in PRESETS.items()]
    notes[0] += " (the last two only with an OpenAI(-compatible) judge)"
    notes.append(f"With --student toy, the toy preset sets: {shown(TOY_PRESET)}; under --preset, only "
                 + ", ".join("--" + k.replace("_", "-") for k in toy_scale))
    ap = data.ArgumentParser(usage="%(prog)s [options]", description=__doc__.split("\n\n")[0],
                             formatter_class=argparse.RawDescriptionHelpFormatter,
                             epilog="\n\n".join(textwrap.fill(n, 100, subsequent_indent="  ", break_on_hyphens=False) for n in notes))
    defaults, docs = Args(), field_docs(Args)
    for f in dataclasses.fields(Args):
        name = FLAGS.get(f.name, "--" + f.name.replace("_", "-"))
        d, doc = getattr(defaults, f.name), docs.get(f.name, "")
        toy_note = f"; toy preset: {TOY_PRESET[f.name]}" if f.name in TOY_PRESET else ""
        shown = "" if "default" in doc and not toy_note else f" (default: {d}{toy_note})"
        kw = dict(default=None, dest=f.name, help=(doc + shown).replace("%", "%%"))
        if isinstance(d, bool):
            ap.add_argument(name, action=argparse.BooleanOptionalAction, **kw)
        elif isinstance(d, tuple):
            ap.add_argument(name, type=float, nargs=len(d), metavar="X", **kw)
        elif f.name in CHOICES:
            ap.add_argument(name, choices=[c for c in CHOICES[f.name] if c is not None], **kw)
        else:
            typ = float if isinstance(d, float) or f.name.endswith("temperature") else int if isinstance(d, int) else str
            ap.add_argument(name, type=typ, metavar={int: "N", float: "X", str: "S"}[typ], **kw)
    ns = ap.parse_args(argv)
    given = {k: v for k, v in vars(ns).items() if v is not None}
    if ns.config:  # the file's settings, then the command line's on top
        from_file = read_config(ns.config)
        for k, v in from_file.items():  # an args.json keeps no secret: it must be given again
            if "***" in str(v) and k not in given:
                raise UserError(f"--config {ns.config}: its {k} held a secret that was not saved; give "
                                f"{FLAGS.get(k, '--' + k.replace('_', '-'))} on the command line")
        given = {**from_file, **given}
    args = Args(**given)
    if args.resume:
        return resumed_args(args, given)
    preset = PRESETS.get(args.preset, {})
    openai_judge = (args.judge or args.teacher).startswith("openai:")
    for k, v in preset.items():  # a named preset fills what the user did not set
        if k not in given and (k not in OPENAI_ONLY or openai_judge):
            setattr(args, k, v)
    if args.student == "toy":  # the toy preset fills what the user did not set (and keeps a preset toy-sized)
        for k, v in TOY_PRESET.items():
            if k not in given and (k not in preset or k in TOY_SCALE):
                setattr(args, k, v)
    return args


def read_config(path: str) -> dict:
    """--config: settings by their Args names from a TOML file or a JSON object (a run's args.json
    is one, so a run can be rerun from its folder). An unknown name or a value of the wrong type is
    refused in one line; the file's own `config` entry is ignored."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config {path}: no such file")
    try:
        import tomllib
        text = p.read_text()
        cfg = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:  # tomllib.TOMLDecodeError and JSONDecodeError are ValueErrors
        raise UserError(f"--config {path}: not valid {'TOML' if p.suffix == '.toml' else 'JSON'} "
                        f"({str(e).splitlines()[0]})") from None
    if not isinstance(cfg, dict):
        raise UserError(f"--config {path}: expected a table of settings (name = value)")
    cfg = {str(k).replace("-", "_"): v for k, v in cfg.items()}
    cfg.pop("config", None)
    fields = {f.name: f for f in dataclasses.fields(Args)}
    unknown = sorted(set(cfg) - set(fields))
    if unknown:
        raise UserError(f"--config {path}: unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                        f"(python ropd.py --help lists them, as --flag-name; the file takes flag_name)")
    defaults = Args()
    for k, v in cfg.items():
        if not _fits(v, str(fields[k].type), getattr(defaults, k)):
            raise UserError(f"--config {path}: {k} = {v!r} is not a {fields[k].type}")
    if isinstance(cfg.get("betas"), list):
        cfg["betas"] = tuple(cfg["betas"])
    return cfg


def _fits(v, annotation: str, default) -> bool:
    """Whether a config value has its field's type (an int is a float; None only where allowed)."""
    if v is None:
        return "None" in annotation
    if isinstance(default, tuple):
        return isinstance(v, (list, tuple)) and len(v) == len(default) and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
    if "bool" in annotation:
        return isinstance(v, bool)
    if "float" in annotation:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if "int" in annotation:
        return isinstance(v, int) and not isinstance(v, bool)
    return isinstance(v, str)


# What a resumed run may change freely: where and how long it runs, and how it talks to the
# teacher; not what it trains (method, models, data, seed, sampling, optimizer, judge settings).
FREE_ON_RESUME = ("resume", "out", "steps", "device", "overwrite", "override_saved", "concurrency", "rpm",
                  "request_timeout", "max_reply_bytes", "cache", "save_every", "keep_last", "eval_every",
                  "eval_samples", "log_samples", "new_references", "report_to", "config")


def resumed_args(args: Args, given: dict) -> Args:
    """--resume continues the run as it was: every setting the user did not give is the saved one
    (the checkpoint's trainer_state.pt), and a given one that contradicts it is refused (check_args
    says so, after the flags' own checks), unless --override-saved, which logs each change."""
    ckpt = find_checkpoint(args.resume)
    saved = load_trainer_state(ckpt).get("args") or {}
    if "out" not in given:
        given["out"] = str(ckpt.parent)
    fields = {f.name for f in dataclasses.fields(Args)}
    merged = {k: v for k, v in saved.items() if k in fields and k not in FREE_ON_RESUME}
    changed = [k for k, v in given.items() if k in merged and _plain(v) != _plain(merged[k])
               and "***" not in str(merged[k])]  # a saved value with a redacted secret is given again
    args = Args(**{**merged, **given})
    args.betas = tuple(args.betas)
    redacted = [k for k, v in merged.items() if "***" in str(v) and k not in given]
    args._resume_changes = [(k, merged[k], given[k]) for k in changed]  # checked in check_args
    args._resume_redacted = redacted
    return args


def _plain(v):
    """A setting as plain JSON types (a tuple and a list of the same numbers are one setting)."""
    return json.loads(json.dumps(v))


def check_resume_changes(args: Args, log=print):
    """Refuse a flag that contradicts the resumed run's saved setting (or, with --override-saved,
    log it); refuse a saved setting whose secret was redacted and is not given again."""
    flag = lambda name: FLAGS.get(name, "--" + name.replace("_", "-"))  # noqa: E731
    for name in getattr(args, "_resume_redacted", []):
        raise UserError(f"--resume: the saved {flag(name)} held a secret that was not saved; give {flag(name)} again")
    changes = getattr(args, "_resume_changes", [])
    if changes and not args.override_saved:
        name, old, new = changes[0]
        raise UserError(f"--resume: {flag(name)} {_shown(new)} contradicts the run's saved {_shown(old)}; leave it "
                        f"off to continue the run as it was, or add --override-saved to change it")
    for name, old, new in changes:
        log(teacher_lib.redact(f"--override-saved: {flag(name)} {_shown(old)} -> {_shown(new)}"))


def _shown(v) -> str:
    return " ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        args = parse_args(argv)
        # the same numbers on any x86 CPU, before the first tensor operation (README, the default run)
        toy.pin_cpu_numerics(threads=toy.BUILD_THREADS if args.student == "toy" else None)
        train(args, log=lambda *x: print(*map(teacher_lib.redact, x)))
    except (UserError, teacher_lib.TeacherError) as e:
        print(f"error: {teacher_lib.redact(str(e))}", file=sys.stderr)
        return 2
    except grpo.NonFiniteError as e:  # the update was not taken; the last checkpoint is good
        out = Path(args.out)
        done = sum(1 for _ in open(out / "metrics.jsonl")) if (out / "metrics.jsonl").exists() else 0
        latest = (out / "latest").read_text().strip() if (out / "latest").exists() else "none"
        print(f"error: step {done + 1}: {e}; stopping (last checkpoint: {latest})", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a folder that is not writable: the last whole checkpoint stays
        print(f"error: {teacher_lib.redact(f'{e.filename or e}: {e.strerror or e}')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130
    finally:
        release_run_locks()
    return 0


if __name__ == "__main__":
    sys.exit(main())
