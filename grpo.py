"""grpo.py - the on-policy RL core shared by ROPD and its baselines (arXiv 2605.07396, §2.1, Eqs. 6-8).

Everything here works on plain tensors and any Hugging Face causal LM:

    sample            §2.1: G rollouts per prompt, left-padded prompts, EOS-aware completion mask
    token_logprobs    log pi(y_t | x, y_<t) of given completion ids, tiled over positions and vocabulary
    group_advantages  Eq. 6: A_i = s_i - mean(group)   (optionally / std, the paper's text)
    policy_loss       Eqs. 7-8: PPO-clip with asymmetric + dual clip, three loss aggregations, k3 KL
    update_policy     Eq. 8 optimised: mini-batches of whole groups, micro-batches, grad-norm clip;
                      it calls policy_loss itself, so the loop is train -> update_policy -> policy_loss
    lopd_advantages   the LOPD baseline: A_t = log pi_T(y_t) - log pi_old(y_t)
    tis_weights       the official sampler correction min(pi_old / pi_sampler, C), for rollouts that
                      another engine sampled (vLLM: sampler.py)

What was dropped from "full" PPO/GRPO, and why:
  * no value function / GAE: the advantage is group-relative (GRPO), one number per rollout;
  * no entropy bonus and, by default, no KL to a reference model: the official ROPD settings use
    neither (the paper's text names a KL term; `ref_logp` + `kl_beta` give it back, k3 estimator);
  * the sampler/learner importance correction (TIS) only where another engine samples
    (--sampler vllm); by default the policy samples its own rollouts, so there is nothing to correct.

Nothing in this file knows about rubrics or teachers: rewards arrive as a plain tensor. It imports
torch alone (transformers only inside `sampling_kwargs` and `takes_a_decoding_loop`), so the loss
copies without it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Sequence

import torch

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm", "micro-token-mean")
INVARIANT_AGGREGATIONS = AGGREGATIONS[:3]  # the gradient does not depend on the micro-batch size (or the ranks)
ADV_SCALES = ("none", "std", "eq6")
RATIOS = ("token", "sequence")


# ----------------------------------------------------------------------------------------------
# Encoding: chats -> left-padded prompt ids; texts -> right-padded completion ids ending in EOS
# ----------------------------------------------------------------------------------------------

def eos_ids(tokenizer, model=None) -> list[int]:
    """All token ids that end a completion (generation config first: chat models often have
    several, e.g. Qwen's <|im_end|> and <|endoftext|>)."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = tokenizer.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def encode_prompts(tokenizer, prompts, chat_template_kwargs: dict | None = None):
    """Render prompts through the chat template and left-pad them.

    A prompt is a string (sent as one user message) or a list of chat messages.
    Returns (input_ids [B, P], attention_mask [B, P]).
    """
    token_lists = [encode_chat(tokenizer, [{"role": "user", "content": p}] if isinstance(p, str) else p,
                               chat_template_kwargs) for p in prompts]
    P = max(len(t) for t in token_lists)
    input_ids = torch.full((len(token_lists), P), pad_id(tokenizer), dtype=torch.long)
    attention_mask = torch.zeros((len(token_lists), P), dtype=torch.long)
    for i, t in enumerate(token_lists):
        input_ids[i, P - len(t):] = torch.tensor(t, dtype=torch.long)
        attention_mask[i, P - len(t):] = 1
    return input_ids, attention_mask


def rollout_prompts(tokenizer, prompts, *, n: int, chat_template_kwargs: dict | None = None,
                    row_seeds: Sequence[int] | None = None):
    """encode_prompts with each prompt repeated `n` times (its group, prompt-major), checking that
    `row_seeds`, if given, has one seed per rollout. Returns (input_ids [B*n, P], attention_mask)."""
    ids, mask = encode_prompts(tokenizer, prompts, chat_template_kwargs)
    ids, mask = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
    if row_seeds is not None and len(row_seeds) != ids.shape[0]:
        raise ValueError(f"{len(row_seeds)} row seeds for {ids.shape[0]} completions")
    return ids, mask


def special_strings(tokenizer) -> list[str]:
    """The texts that a tokenizer turns into special tokens (<|im_start|>, </s>, ...)."""
    return [t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special]


def encode_chat(tokenizer, chat: list[dict], chat_template_kwargs: dict | None = None) -> list[int]:
    """One chat through the template, its messages' text encoded WITHOUT special-token parsing:
    a data prompt holding "<|im_end|><|im_start|>assistant" must stay text, not forge a turn. The
    template's own markers are still special tokens. A chat with no special-token string in it
    (nearly all) takes the plain path; otherwise the template is rendered around placeholders and
    the pieces are encoded apart (the template's with, the messages' without special tokens)."""
    kw = chat_template_kwargs or {}
    specials = special_strings(tokenizer)
    texts = [m.get("content") for m in chat]
    if not any(isinstance(t, str) and sp in t for t in texts for sp in specials):
        ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False, **kw)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)  # some versions return a BatchEncoding
    marks = [f"\u27earopd-text-{k}\u27eb" for k in range(len(chat))]
    rendered = tokenizer.apply_chat_template([{**m, "content": mk} for m, mk in zip(chat, marks)],
                                             add_generation_prompt=True, tokenize=False, **kw)
    pieces = re.split("(" + "|".join(map(re.escape, marks)) + ")", rendered)
    if pieces[1::2] != marks:  # the template changed or dropped a message: say nothing special through it
        safe = [{**m, "content": _defuse(m["content"], specials)} if isinstance(m.get("content"), str) else m
                for m in chat]
        return encode_chat(tokenizer, safe, kw)
    ids = []
    for k, piece in enumerate(pieces):
        untrusted = k % 2 == 1
        text = texts[marks.index(piece)] if untrusted else piece
        ids += tokenizer(text, add_special_tokens=False, split_special_tokens=untrusted)["input_ids"] if text else []
    return ids


def _defuse(text: str, specials: list[str]) -> str:
    """A zero-width space after each special-token string's first character: it reads the same and
    no longer matches (only where the template would not let the text be encoded apart)."""
    for sp in specials:
        text = text.replace(sp, sp[0] + "\u200b" + sp[1:])
    return text


def encode_completions(tokenizer, texts: list[str], max_tokens: int | None = None):
    """Tokenize target texts (SFT, references) and append EOS; right-pad.

    Returns (completion_ids [B, T], completion_mask [B, T]); the EOS is inside the mask, so the
    model learns to stop.
    """
    eos = tokenizer.eos_token_id
    # untrusted text (a teacher's reference): "</s>" in it is text, not an end-of-sequence mid-answer
    token_lists = [tokenizer(t, add_special_tokens=False, split_special_tokens=True)["input_ids"]
                   for t in texts]
    if max_tokens is not None:
        token_lists = [t[: max_tokens - 1] for t in token_lists]
    token_lists = [t + [eos] for t in token_lists]
    T = max(len(t) for t in token_lists)
    ids = torch.full((len(token_lists), T), pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(token_lists), T), dtype=torch.long)
    for i, t in enumerate(token_lists):
        ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        mask[i, : len(t)] = 1
    return ids, mask


def completion_mask(completion_ids: torch.Tensor, eos: list[int]) -> torch.Tensor:
    """1 for every token up to and including the first EOS, 0 after it.

    Built from the *position* of the first EOS, never from `ids != pad_id`: when pad == EOS (many
    chat models) the latter silently drops the EOS from the loss and the model never learns to stop.
    A completion with no EOS (truncated at max_new_tokens) keeps all its tokens.
    """
    is_eos = torch.isin(completion_ids, torch.tensor(eos, device=completion_ids.device))
    # number of EOS tokens strictly before position t; a token counts while none came before it
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    return (eos_before == 0).long()


# ----------------------------------------------------------------------------------------------
# Rollouts (§2.1)
# ----------------------------------------------------------------------------------------------

@dataclass
class Rollouts:
    """G rollouts for each of B prompts, grouped: rows i*G .. i*G+G-1 belong to prompt i."""
    prompt_ids: torch.Tensor       # [B*G, P] left-padded
    prompt_mask: torch.Tensor      # [B*G, P]
    completion_ids: torch.Tensor   # [B*G, T] sampled ids, kept as ids end to end
    completion_mask: torch.Tensor  # [B*G, T] 1 up to and including the first EOS
    texts: list[str]               # decoded completions, special tokens removed
    group_size: int                # G
    old_logp: torch.Tensor | None = None  # [B*G, T] log pi_theta_old at sampling time (Eq. 7's denominator)
    ref_logp: torch.Tensor | None = None  # [B*G, T] the initial student's (KL term, ExOPD)
    sampler_logp: torch.Tensor | None = None  # [B*G, T] the sampler's own (vLLM, sampler.py), for TIS

    @property
    def prompt_index(self) -> list[int]:
        """Which prompt each rollout answers (reward alignment is by construction)."""
        return [i // self.group_size for i in range(len(self.texts))]

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(1)

    @property
    def truncated(self) -> torch.Tensor:
        """True where the rollout hit max_new_tokens without an EOS."""
        return self.completion_mask[:, -1].bool()


def concat_rollouts(parts: list[Rollouts], pad: int) -> Rollouts:
    """Rollouts of several batches as one (prompts left-padded, completions right-padded with
    `pad` to the widest; log-probs padded with 0): the batch the ranks sampled slice by slice."""
    if len(parts) == 1:
        return parts[0]
    P = max(r.prompt_ids.shape[1] for r in parts)
    T = max(r.completion_ids.shape[1] for r in parts)
    left = lambda t, v: torch.nn.functional.pad(t, (P - t.shape[1], 0), value=v)  # noqa: E731
    right = lambda t, v: None if t is None else torch.nn.functional.pad(t, (0, T - t.shape[1]), value=v)  # noqa: E731
    cat = lambda ts: None if ts[0] is None else torch.cat(ts)  # noqa: E731
    return Rollouts(prompt_ids=torch.cat([left(r.prompt_ids, pad) for r in parts]),
                    prompt_mask=torch.cat([left(r.prompt_mask, 0) for r in parts]),
                    completion_ids=torch.cat([right(r.completion_ids, pad) for r in parts]),
                    completion_mask=torch.cat([right(r.completion_mask, 0) for r in parts]),
                    texts=[t for r in parts for t in r.texts], group_size=parts[0].group_size,
                    old_logp=cat([right(r.old_logp, 0.0) for r in parts]),
                    ref_logp=cat([right(r.ref_logp, 0.0) for r in parts]),
                    sampler_logp=cat([right(r.sampler_logp, 0.0) for r in parts]))


@dataclass(frozen=True)
class SamplingConfig:
    """How rollouts are sampled (§2.1). Eq. 7's log-probs are taken at the same temperature."""
    group_size: int = 8            # G, rollouts per prompt
    max_new_tokens: int = 8192     # rollout length limit
    temperature: float = 1.0
    top_p: float = 1.0             # nucleus sampling
    static_cache: bool = False     # a pre-allocated KV cache (compiled by transformers on a GPU)


def decode(tokenizer, completion_ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Decode each completion's valid tokens without special tokens (EOS, pad)."""
    return [tokenizer.decode(ids[m.bool()].tolist(), skip_special_tokens=True)
            for ids, m in zip(completion_ids, mask)]


class RowSeededSampling:
    """A logits processor for generate() (any callable (input_ids, scores) -> scores; not a
    subclass of transformers.LogitsProcessor, so that `import grpo` needs torch alone). Samples row i
    with its own generator, seeded by seeds[i] (the Gumbel-max trick: the argmax
    of logits / temperature + Gumbel noise is a sample of softmax(logits / temperature), after the
    top-p cut). A row's sample then depends on its seed and its own logits only, not on which
    other rows share its batch: the same request gives the same text in any batch, on any number
    of processes. Used with greedy decoding (generate(do_sample=False))."""

    def __init__(self, seeds: Sequence[int], *, temperature: float, top_p: float, device):
        self.gens = [torch.Generator(device=device).manual_seed(int(s) % 2 ** 63) for s in seeds]
        self.temperature, self.top_p = temperature, top_p

    def keep_rows(self, keep: torch.Tensor):
        """The batch lost its finished rows (drop_finished_loop): keep the others' generators."""
        self.gens = [g for g, k in zip(self.gens, keep.tolist()) if k]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logits = scores.float() / self.temperature
        if self.top_p < 1.0:  # keep the smallest set of tokens whose probability reaches top_p
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            p = sorted_logits.softmax(-1)
            drop = (p.cumsum(-1) - p) >= self.top_p  # the first token is always kept
            logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        u = torch.empty_like(logits)  # one uniform row per rollout, each from its own generator
        for i, g in enumerate(self.gens):
            torch.rand(logits.shape[-1], generator=g, out=u[i])
        return logits.sub_(u.clamp_(1e-12, 1 - 1e-7).log_().neg_().log_())  # + Gumbel noise, in place


def sampling_kwargs(*, temperature: float, top_p: float, row_seeds, device) -> dict:
    """generate()'s sampling arguments: greedy at temperature 0; seeded per row (RowSeededSampling
    on top of greedy decoding, in drop_finished_loop where transformers can run it) with
    `row_seeds`; else Hugging Face's own sampling."""
    if temperature > 0 and row_seeds is None:
        return dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    greedy = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    if temperature > 0:
        from transformers import LogitsProcessorList  # here, not at the top: the loss needs torch alone
        greedy["logits_processor"] = LogitsProcessorList([
            RowSeededSampling(row_seeds, temperature=temperature, top_p=top_p, device=device)])
        if takes_a_decoding_loop():  # rollouts leave the batch at their EOS
            greedy["custom_generate"] = drop_finished_loop
    return greedy


def takes_a_decoding_loop() -> bool:
    """Whether this transformers' generate() runs a decoding loop given as a callable."""
    import inspect

    from transformers import GenerationMixin
    return "Callable" in str(inspect.signature(GenerationMixin.generate).parameters.get("custom_generate", ""))


def droppable(cache) -> bool:
    """A cache whose rows can be dropped: attention keys and values only, in every layer (not a
    linear-attention or recurrent state, which DynamicLayer.batch_select_indices would not cut)."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers)


@torch.no_grad()
def drop_finished_loop(model, input_ids, logits_processor, stopping_criteria, generation_config,
                       synced_gpus: bool = False, streamer=None, **model_kwargs) -> torch.Tensor:
    """generate()'s decoding loop (its `custom_generate`), for sampling with one generator per row:
    a rollout leaves the batch at its EOS, so each step computes only the rollouts still being
    written. Hugging Face's own loop runs every row to the end of the longest (a finished row keeps
    costing a forward per token). The same tokens: each row is sampled from its own logits with its
    own generator (RowSeededSampling.keep_rows). Returns the prompts and completions, right-padded."""
    cache_arg = next((k for k in ("cache", "past_key_values") if model_kwargs.get(k) is not None), None)
    if cache_arg is None or not droppable(model_kwargs[cache_arg]):  # Hugging Face's own loop
        return type(model)._sample(model, input_ids, logits_processor, stopping_criteria, generation_config,
                                   synced_gpus=synced_gpus, streamer=streamer, **model_kwargs)
    cache, attn = model_kwargs[cache_arg], model_kwargs.get("attention_mask")
    eos, pad = generation_config._eos_token_tensor, generation_config._pad_token_tensor
    B, P = input_ids.shape
    attn = torch.ones_like(input_ids) if attn is None else attn  # (generate drops an all-ones mask)
    eos = input_ids.new_empty(0) if eos is None else eos
    out = input_ids.new_full((B, generation_config.max_length - P), int(pad))
    alive, seqs, step_ids = torch.arange(B, device=input_ids.device), input_ids, input_ids
    position_ids = (attn.long().cumsum(-1) - 1).clamp(min=0)
    for t in range(out.shape[1]):
        logits = model(input_ids=step_ids, attention_mask=attn, position_ids=position_ids, use_cache=True,
                       logits_to_keep=1, **{cache_arg: cache}).logits[:, -1].float()
        nxt = logits_processor(seqs, logits).argmax(-1)  # RowSeededSampling's Gumbel-max: a sample per row
        out[alive, t] = nxt
        keep = ~torch.isin(nxt, eos)
        if not keep.all():
            alive, nxt, seqs, attn = alive[keep], nxt[keep], seqs[keep], attn[keep]
            if not len(alive):
                return torch.cat([input_ids, out[:, :t + 1]], 1)
            cache.batch_select_indices(keep.nonzero().squeeze(1))
            for p in logits_processor:
                getattr(p, "keep_rows", lambda k: None)(keep)
        seqs, step_ids = torch.cat([seqs, nxt[:, None]], 1), nxt[:, None]
        attn = torch.cat([attn, attn.new_ones((len(alive), 1))], 1)
        position_ids = attn.long().sum(-1, keepdim=True) - 1
    return torch.cat([input_ids, out], 1)


@torch.no_grad()
def sample(model, tokenizer, prompts, *, n: int = 8, max_new_tokens: int = 512,
           temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
           chat_template_kwargs: dict | None = None, row_seeds: Sequence[int] | None = None,
           static_cache: bool = False) -> Rollouts:
    """§2.1 (student rollouts): sample `n` completions for each prompt.

    `temperature == 0` means greedy decoding. With `row_seeds` (one per completion, prompt-major)
    each completion is sampled with its own seed (RowSeededSampling), whatever shares its batch.
    Else, with `seed`, the batch is reproducible and leaves the global RNG untouched; without
    either, it draws from (and advances) the global torch RNG. `static_cache`: a pre-allocated KV
    cache, which transformers compiles with torch.compile on a GPU (fewer Python round trips per
    token; the same tokens).
    """
    device = next(model.parameters()).device
    ids, mask = rollout_prompts(tokenizer, prompts, n=n, chat_template_kwargs=chat_template_kwargs, row_seeds=row_seeds)
    ids, mask = ids.to(device), mask.to(device)
    eos = eos_ids(tokenizer, model)
    gen_kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=pad_id(tokenizer), eos_token_id=eos,
                      use_cache=True,
                      **sampling_kwargs(temperature=temperature, top_p=top_p, row_seeds=row_seeds, device=device))
    if static_cache:  # (a static cache cannot drop rows: Hugging Face's own loop)
        gen_kwargs.update(cache_implementation="static", custom_generate=None)
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        out = model.generate(input_ids=ids, attention_mask=mask, **gen_kwargs)
    model.train(was_training)
    completion_ids = out[:, ids.shape[1]:]
    if completion_ids.shape[1] == 0:  # max_new_tokens=0: keep shapes sane
        completion_ids = torch.full((ids.shape[0], 1), eos[0], device=device)
    cmask = completion_mask(completion_ids, eos)
    texts = decode(tokenizer, completion_ids, cmask)
    return Rollouts(prompt_ids=ids, prompt_mask=mask, completion_ids=completion_ids, completion_mask=cmask,
                    texts=texts, group_size=n)


# ----------------------------------------------------------------------------------------------
# Per-token log-probabilities, without ever materialising [B, T, V]
# ----------------------------------------------------------------------------------------------

def _logits_tile(out: torch.Tensor, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
                 scale: float) -> torch.Tensor:
    """out <- scale * (h @ w.T + b): one [n, v] tile of logits, written into a reused buffer."""
    if b is None:
        return out.addmm_(h, w.t(), beta=0, alpha=scale)  # beta=0: out's old contents are ignored
    return torch.addmm(b, h, w.t(), beta=scale, alpha=scale, out=out)


class _TiledLogProb(torch.autograd.Function):
    """log softmax(softcap(h @ W.T + b) / temperature)[target] for N positions [N, H] -> [N], tiled
    over the positions (`chunk_tokens`) *and* the vocabulary (`chunk_vocab`): in forward and in
    backward at most one [chunk_tokens, chunk_vocab] tile of logits exists at a time (two with a
    softcap, in backward), never [N, V].

    Forward: for each vocabulary tile (outer loop, so a low-precision W is upcast one tile at a
    time) and each chunk of positions, the tile's logits; a running max and sum of exponentials per
    position (online logsumexp) across tiles; each target's logit picked from the tile that holds
    it. Saved for backward: h, W, b, the targets and the per-position logsumexp - O(N) besides the
    inputs. Backward recomputes each tile, p = exp(logit / temperature - lse), and with g the
    incoming gradient and z = h @ W.T + b,
        dL/dz = g (onehot(target) - p) / temperature  * (1 - tanh(z / softcap)^2 with a softcap),
    then grad_h += dL/dz @ W_tile, grad_W_tile += dL/dz^T @ h_chunk, grad_b_tile += sum_rows dL/dz.
    Arithmetic is float32 (float64 for float64 inputs, for gradcheck), also under autocast;
    gradients come back in the inputs' dtypes, and only for the inputs that require them.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, targets, settings):
        temperature, softcap, chunk_tokens, chunk_vocab = settings  # (autograd's apply takes no keywords)
        acc = torch.float64 if torch.float64 in (h.dtype, weight.dtype) else torch.float32
        (N, _), V = h.shape, weight.shape[0]
        run_max = torch.full((N,), -math.inf, dtype=acc, device=h.device)
        run_sum = torch.zeros(N, dtype=acc, device=h.device)
        picked = torch.zeros(N, dtype=acc, device=h.device)
        buf = torch.empty(min(N, chunk_tokens) * min(V, chunk_vocab), dtype=acc, device=h.device)
        with torch.autocast(h.device.type, enabled=False):
            for v0 in range(0, V, chunk_vocab):
                w = weight[v0:v0 + chunk_vocab].to(acc)
                b = None if bias is None else bias[v0:v0 + chunk_vocab].to(acc)
                for s in range(0, N, chunk_tokens):
                    hc, tc = h[s:s + chunk_tokens].to(acc), targets[s:s + chunk_tokens]
                    (n, _), v = hc.shape, w.shape[0]
                    z = buf[:n * v].view(n, v)
                    if softcap:
                        _logits_tile(z, hc, w, b, 1.0 / softcap).tanh_().mul_(softcap / temperature)
                    else:
                        _logits_tile(z, hc, w, b, 1.0 / temperature)
                    cols, hit = _target_columns(tc, v0, v)
                    picked[s:s + n] = torch.where(hit, z.gather(1, cols[:, None]).squeeze(1), picked[s:s + n])
                    m = run_max[s:s + n]
                    new_m = torch.maximum(m, z.amax(dim=1))
                    run_sum[s:s + n].mul_(torch.exp(m - new_m)).add_(z.sub_(new_m[:, None]).exp_().sum(dim=1))
                    m.copy_(new_m)
        lse = run_max + torch.log(run_sum)
        ctx.save_for_backward(h, weight, bias, targets, lse)
        ctx.settings = temperature, softcap, chunk_tokens, chunk_vocab
        return picked - lse

    @staticmethod
    def backward(ctx, grad):
        h, weight, bias, targets, lse = ctx.saved_tensors
        temperature, softcap, chunk_tokens, chunk_vocab = ctx.settings
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        acc, (N, H), V = lse.dtype, h.shape, weight.shape[0]
        # with a softcap the temperature goes into the tanh factor, without one into the coefficient
        coef = grad.to(acc) if softcap else grad.to(acc) / temperature
        grad_h = torch.zeros(N, H, dtype=acc, device=h.device) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros(V, dtype=acc, device=h.device) if need_b else None
        direct = weight.dtype == acc  # else W's grad is summed in float32 one tile at a time
        size = min(N, chunk_tokens) * min(V, chunk_vocab)
        buf = torch.empty(size, dtype=acc, device=h.device)
        buf2 = torch.empty(size, dtype=acc, device=h.device) if softcap else None
        with torch.autocast(h.device.type, enabled=False):
            for v0 in range(0, V, chunk_vocab):
                w = weight[v0:v0 + chunk_vocab].to(acc)
                b = None if bias is None else bias[v0:v0 + chunk_vocab].to(acc)
                v = w.shape[0]
                gw = None  # this tile's rows of grad W, summed over the position chunks
                if need_w:
                    gw = grad_w[v0:v0 + v] if direct else torch.zeros(v, H, dtype=acc, device=h.device)
                for s in range(0, N, chunk_tokens):
                    hc, tc = h[s:s + chunk_tokens].to(acc), targets[s:s + chunk_tokens]
                    n = hc.shape[0]
                    z = buf[:n * v].view(n, v)
                    if softcap:
                        t = _logits_tile(buf2[:n * v].view(n, v), hc, w, b, 1.0 / softcap).tanh_()
                        torch.mul(t, softcap / temperature, out=z)
                    else:
                        _logits_tile(z, hc, w, b, 1.0 / temperature)
                    dz = z.sub_(lse[s:s + n, None]).exp_().mul_(-coef[s:s + n, None])  # -g p
                    cols, hit = _target_columns(tc, v0, v)
                    dz.scatter_add_(1, cols[:, None], torch.where(hit, coef[s:s + n], 0.0)[:, None])  # + g onehot
                    if softcap:  # d(softcap tanh(z / softcap) / temperature)/dz = (1 - tanh^2) / temperature
                        dz.mul_(t.square_().sub_(1).mul_(-1.0 / temperature))
                    if need_h:
                        grad_h[s:s + n].addmm_(dz, w)
                    if need_w:
                        gw.addmm_(dz.t(), hc)
                    if need_b:
                        grad_b[v0:v0 + v] += dz.sum(dim=0)
                if need_w and not direct:
                    grad_w[v0:v0 + v].copy_(gw)
        return (None if grad_h is None else grad_h.to(h.dtype), grad_w,
                None if grad_b is None else grad_b.to(bias.dtype), None, None)


def _target_columns(targets: torch.Tensor, v0: int, v: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each target's column in the tile of vocabulary ids [v0, v0 + v) (clamped into it) and
    whether the target is in that tile; masks rather than indices, so a GPU never waits on a sync."""
    local = targets - v0
    return local.clamp(0, v - 1), (local >= 0) & (local < v)


def head_logprobs(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, *,
                  bias: torch.Tensor | None = None, temperature: float = 1.0,
                  softcap: float | None = None, chunk_tokens: int = 1024,
                  chunk_vocab: int = 8192) -> torch.Tensor:
    """log softmax(softcap(hidden @ weight.T + bias) / temperature)[targets]: hidden [N, H],
    targets [N], weight [V, H] (the output head's, or the tied embedding's) -> float32 [N].
    Differentiable in hidden, weight and bias; tiled over positions and the vocabulary, so neither
    forward nor backward holds more than one [chunk_tokens, chunk_vocab] tile of logits
    (see _TiledLogProb)."""
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1] or weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"shapes: hidden {tuple(hidden.shape)}, targets {tuple(targets.shape)}, "
                         f"weight {tuple(weight.shape)}; want [N, H], [N], [V, H]")
    lo, hi = torch.stack(torch.aminmax(targets)).tolist() if len(targets) else (0, 0)  # one device sync
    if lo < 0 or hi >= weight.shape[0]:
        raise ValueError(f"target ids must lie in [0, {weight.shape[0]})")
    if chunk_tokens < 1 or chunk_vocab < 1:
        raise ValueError("chunk_tokens and chunk_vocab must be positive")
    settings = (float(temperature), float(softcap) if softcap else None, chunk_tokens, chunk_vocab)
    return _TiledLogProb.apply(hidden, weight, bias, targets, settings)


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_completion: int, *,
                   temperature: float = 1.0, chunk_tokens: int = 1024,
                   chunk_vocab: int = 8192) -> torch.Tensor:
    """log pi(y_t | x, y_<t) (Eq. 7) for the last `n_completion` tokens of `input_ids`, [B, n_completion].

    The logits are divided by the sampling temperature, so these are the log-probs of the policy
    that actually produced the samples (otherwise the importance ratio is not 1 on-policy).
    Memory: the model body runs once; the output head and log-softmax then run tile by tile, at
    most `chunk_tokens` positions x `chunk_vocab` vocabulary entries at a time, in forward and in
    backward (`head_logprobs`), so neither pass holds [B, T, V] logits (4.8 GB for 8 x 1k tokens
    at a 150k vocabulary in fp32) nor even [chunk_tokens, V].
    Position ids come from the attention mask, exactly as `generate` builds them for left-padded
    prompts; without this, the log-probs of left-padded rows differ from the sampler's.
    """
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    body, head = model.get_decoder(), model.get_output_embeddings()
    hidden = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                  use_cache=False).last_hidden_state
    # the hidden state at position t predicts token t+1
    h = hidden[:, -n_completion - 1:-1, :]
    B, T, H = h.shape
    softcap = getattr(model.config, "final_logit_softcapping", None)
    logp = head_logprobs(h.reshape(B * T, H), input_ids[:, -n_completion:].reshape(B * T), head.weight,
                         bias=getattr(head, "bias", None), temperature=temperature, softcap=softcap,
                         chunk_tokens=chunk_tokens, chunk_vocab=chunk_vocab)
    return logp.view(B, T)


def policy_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_completion: int, *,
                    temperature: float = 1.0) -> torch.Tensor:
    """token_logprobs of the policy: a causal LM, or a wrapper whose forward computes them
    (dist.ShardedPolicy: under FSDP2 the call must run inside the root module's forward)."""
    if getattr(model, "computes_logprobs", False):
        return model(input_ids, attention_mask, n_completion, temperature=temperature)
    return token_logprobs(model, input_ids, attention_mask, n_completion, temperature=temperature)


def naive_token_logprobs(model, input_ids, attention_mask, n_completion, temperature=1.0):
    """The textbook formula (full [B, T, V] log-softmax of the model's own logits, final-logit
    softcap included where the model applies one, as Gemma 2's forward does): the reference that
    tests and the memory benchmark compare `token_logprobs` against. Do not use it for training."""
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False).logits.float()
    logp = torch.log_softmax(logits[:, -n_completion - 1:-1] / temperature, dim=-1)
    return logp.gather(-1, input_ids[:, -n_completion:].unsqueeze(-1)).squeeze(-1)


# ----------------------------------------------------------------------------------------------
# Advantages and the clipped policy-gradient loss (Eqs. 6-8)
# ----------------------------------------------------------------------------------------------

def group_advantages(rewards: torch.Tensor, group_size: int, *, scale: str = "none",
                     eps: float = 1e-6) -> torch.Tensor:
    """Eq. 6 (Alg. 1 line 20): A_i = s_i - mean_{j in group(i)} s_j, one advantage per rollout.

    scale="none" is the official ROPD code (Dr. GRPO-style: no division, so easy and hard prompts
    keep their natural scale); the paper writes the division by the group's spread twice, in two
    forms: scale="std" is Alg. 1 line 20's (s_i - mean) / sqrt(var + eps), scale="eq6" is Eq. 6's
    (s_i - mean) / (std + eps); both use the group's population variance (ddof 0).
    A group whose rewards are all equal gets zero advantage in every form.
    """
    if scale not in ADV_SCALES:
        raise ValueError(f"scale must be one of {ADV_SCALES}, got {scale!r}")
    r = rewards.float().view(-1, group_size)
    adv = r - r.mean(dim=1, keepdim=True)
    if scale == "std":
        adv = adv / torch.sqrt(r.var(dim=1, unbiased=False, keepdim=True) + eps)
    elif scale == "eq6":
        adv = adv / (r.std(dim=1, unbiased=False, keepdim=True) + eps)
    return adv.view(-1)


def lopd_advantages(teacher_logp: torch.Tensor, student_logp: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
    """LOPD's (§3.1) per-token advantage: A_t = log pi_T(y_t | x, y_<t) - log pi_old(y_t | x, y_<t).

    A one-sample estimate of the negative reverse KL at each token, detached, no discounting; zero
    outside the completion mask. Both log-probs must be taken at the same temperature.
    """
    return ((teacher_logp - student_logp) * mask).detach()


def exopd_advantages(teacher_logp: torch.Tensor, student_logp: torch.Tensor, ref_logp: torch.Tensor,
                     mask: torch.Tensor, *, lam: float) -> torch.Tensor:
    """ExOPD's (§3.1; Yang et al., "Generalized on-policy distillation with reward extrapolation")
    per-token advantage: lam * (log pi_T - log pi_ref) - (log pi_old - log pi_ref), pi_ref the
    initial student. On-policy distillation as KL-regularised RL with the teacher's log-ratio as
    reward; lam > 1 extrapolates the reward; lam = 1 is LOPD (the pi_ref terms cancel)."""
    return ((lam * (teacher_logp - ref_logp) - (student_logp - ref_logp)) * mask).detach()


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, *, clip_low: float = 0.2, clip_high: float = 0.28,
                clip_c: float | None = 3.0, agg: str = "token-mean", ref_logp: torch.Tensor | None = None,
                kl_beta: float = 0.0, norm: float | None = None, max_len: int | None = None,
                ratio_level: str = "token", tis_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Eqs. 7-8: the importance-weighted clipped objective (PPO-clip, as in GRPO/DAPO/verl), with the
    official token-level ratio (ratio_level="sequence": Alg. 1 line 25's, sequence_policy_loss).

    Per token t of rollout i, with ratio r = exp(logp - old_logp):
        l_t = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))           (asymmetric clip)
        l_t = min(l_t, clip_c * |A|)       where A < 0, if clip_c is set   (dual clip; the run's c = 3)
        l_t *= tis_weight_t                if given (the sampler correction, tis_weights)
        l_t += kl_beta * k3(ref, logp),  k3 = exp(ref - logp) - (ref - logp) - 1
    `advantages` is [B] (one per rollout, broadcast to its tokens) or [B, T] (per token: LOPD).
    The per-token losses are summed and normalised by `aggregate` (`agg`, `norm`, `max_len`: see
    there). Returns (loss, stats); stats are floats over valid tokens."""
    if agg not in AGGREGATIONS:
        raise ValueError(f"agg must be one of {AGGREGATIONS}, got {agg!r}")
    if ratio_level == "sequence":
        return sequence_policy_loss(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high,
                                    clip_c=clip_c, ref_logp=ref_logp, kl_beta=kl_beta, norm=norm, tis_weight=tis_weight)
    mask = mask.to(logp.dtype)
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    adv = adv.to(logp.dtype).expand_as(logp)
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    pg_unclipped, pg_clipped = -adv * ratio, -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    pg = torch.maximum(pg_unclipped, pg_clipped)
    dual = torch.zeros_like(pg, dtype=torch.bool)
    if clip_c is not None:  # for A < 0 a huge ratio would give an unbounded loss; cap it at clip_c * |A|
        dual = (adv < 0) & (pg > -adv * clip_c)
        pg = torch.where(dual, -adv * clip_c, pg)
    pg = pg if tis_weight is None else pg * tis_weight  # the sampler correction (tis_weights)
    kl = None
    if ref_logp is not None and kl_beta != 0.0:
        d = ref_logp - logp
        kl = torch.exp(d) - d - 1.0  # k3: unbiased, always >= 0
    loss = aggregate(pg if kl is None else pg + kl_beta * kl, mask, agg=agg, norm=norm, max_len=max_len)
    return loss, _loss_stats(mask, ratio=ratio, log_ratio=log_ratio, pg=pg, clipped=pg_clipped > pg_unclipped,
                             dual=dual, kl=kl)


def tis_weights(old_logp: torch.Tensor, sampler_logp: torch.Tensor, *, cap: float) -> torch.Tensor:
    """The official code's sampler correction (token-level truncated importance sampling): a token
    drawn by another engine than the learner (vLLM: other kernels, other precision) weighs
        w_t = min(pi_old(y_t) / pi_sampler(y_t), cap)
    in the loss, pi_old being the learner's own log-prob at sampling time. 1 where the two agree;
    the cap bounds the variance where the sampler under-rates a token. No gradient flows through it."""
    return torch.exp(old_logp - sampler_logp).clamp(max=cap).detach()


@torch.no_grad()
def tis_stats(old_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, *, cap: float) -> dict:
    """The ratio pi_old / pi_sampler over the valid tokens: its mean, min and max, and the share of
    tokens whose weight the cap cut (cap 0: the correction is off, nothing is cut)."""
    ratio = torch.exp(old_logp - sampler_logp)[mask.bool()]
    if ratio.numel() == 0:
        return {}
    return {"tis_ratio_mean": ratio.mean().item(), "tis_ratio_min": ratio.min().item(),
            "tis_ratio_max": ratio.max().item(),
            "tis_capped_frac": (ratio > cap).float().mean().item() if cap else 0.0}


MAX_LOG_RATIO = 20.0  # a sequence's log-ratio is clamped here before exp (verl clamps each token's alike)


def sequence_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                         *, clip_low: float = 0.2, clip_high: float = 0.28, clip_c: float | None = 3.0,
                         ref_logp: torch.Tensor | None = None, kl_beta: float = 0.0, norm: float | None = None,
                         tis_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Alg. 1 line 25: the clipped objective with one importance ratio per rollout,
    rho_i = pi_theta(y_i | x) / pi_theta_old(y_i | x) = exp(sum_t (logp - old_logp)) (the log-ratio
    clamped to +-MAX_LOG_RATIO), l_i = max(-A_i rho_i, -A_i clip(rho_i, 1 - clip_low, 1 + clip_high)),
    dual-clipped like the token form, plus kl_beta times the rollout's mean k3 KL; averaged over the
    rollouts (1/G sum_i, `norm` overriding the count). `advantages` is one per rollout."""
    if advantages.dim() != 1:
        raise ValueError("a sequence-level ratio needs one advantage per rollout (not per-token advantages)")
    if tis_weight is not None:
        raise ValueError("the sampler correction (tis_weight) is per token; a sequence-level ratio has none")
    mask = mask.to(logp.dtype)
    adv = advantages.to(logp.dtype)
    seq_log_ratio = ((logp - old_logp) * mask).sum(-1).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    rho = torch.exp(seq_log_ratio)
    pg_unclipped, pg_clipped = -adv * rho, -adv * rho.clamp(1.0 - clip_low, 1.0 + clip_high)
    pg = torch.max(pg_unclipped, pg_clipped)
    dual = torch.zeros_like(pg, dtype=torch.bool)
    if clip_c is not None:  # as the token form's dual clip, per rollout
        dual = (adv < 0) & (pg > clip_c * -adv)
        pg = torch.where(dual, clip_c * -adv, pg)
    kl = None
    if ref_logp is not None and kl_beta != 0.0:
        d = ref_logp - logp
        kl = torch.exp(d) - d - 1.0
        pg = pg + kl_beta * (kl * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    loss = pg.sum() / (mask.shape[0] if norm is None else norm)
    tok = lambda x: x.unsqueeze(-1).expand_as(logp)  # noqa: E731 - the stats are per token, as the token form's
    return loss, _loss_stats(mask, ratio=tok(rho),
                             log_ratio=tok(seq_log_ratio) / mask.sum(-1, keepdim=True).clamp(min=1.0),
                             pg=tok(pg), clipped=tok(pg_clipped > pg_unclipped), dual=tok(dual), kl=kl)


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, *, agg: str = "token-mean",
              norm: float | None = None, max_len: int | None = None) -> torch.Tensor:
    """The loss's normalisation (the classic source of silent bugs), over the valid tokens:
        token-mean              sum_i sum_t l / (number of valid tokens)       DAPO, official ROPD
        seq-mean-token-mean     sum_i (sum_t l / |y_i|) / (number of rollouts)   original GRPO
        seq-mean-token-sum-norm sum_i (sum_t l / max_len) / (number of rollouts) Dr. GRPO
        micro-token-mean        token-mean of each micro-batch, averaged over the micro-batches:
                                the official code's (verl's dp_actor, micro-batches of 2 rollouts);
                                the gradient depends on the micro-batch size (see loss_norm)
    `norm` overrides the denominator (valid tokens, or rollouts): with gradient accumulation pass
    the whole mini-batch's count, so the gradient does not depend on the micro-batch size.
    `max_len` is Dr. GRPO's constant (default: this batch's padded length)."""
    if agg in ("token-mean", "micro-token-mean"):
        return (per_token * mask).sum() / (mask.sum().clamp(min=1.0) if norm is None else norm)
    if agg == "seq-mean-token-mean":
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    else:
        per_seq = (per_token * mask).sum(-1) / (max_len if max_len is not None else mask.shape[1])
    return per_seq.sum() / (mask.shape[0] if norm is None else norm)


@torch.no_grad()
def _loss_stats(mask, *, ratio, log_ratio, pg, clipped, dual, kl) -> dict:
    """policy_loss's diagnostics, as floats averaged over the valid tokens."""
    m, n_tok = mask.bool(), mask.sum().clamp(min=1.0)
    clipped = clipped & m
    mean = lambda x: (x * mask).sum().div(n_tok).item()  # noqa: E731
    stats = {
        "clip_frac": (clipped.sum() / n_tok).item(),
        "clip_frac_low": ((clipped & (ratio < 1.0)).sum() / n_tok).item(),
        "clip_frac_high": ((clipped & (ratio > 1.0)).sum() / n_tok).item(),
        "dual_clip_frac": ((dual & m).sum() / n_tok).item(),
        "ratio_mean": mean(ratio),
        "approx_kl": mean(torch.exp(log_ratio) - 1 - log_ratio),  # k3 estimate of KL(pi_old || pi_theta)
        "pg_loss": mean(pg),
    }
    if kl is not None:
        stats["kl_ref"] = mean(kl)
    return stats


def sft_loss(logp: torch.Tensor, mask: torch.Tensor, norm: float | None = None) -> torch.Tensor:
    """Supervised fine-tuning: token-mean negative log-likelihood of the target completion
    (EOS included in `mask`). `norm` = the whole mini-batch's token count under accumulation."""
    return aggregate(-logp, mask, agg="token-mean", norm=norm)


def cosine_lr(step: int, total: int, *, warmup: int, base_lr: float, min_ratio: float = 0.0) -> float:
    """Linear warm-up then cosine decay to min_ratio * base_lr (the paper's text schedule)."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def learning_rate(step: int, total: int, *, base_lr: float, schedule: str = "constant", warmup: int = 0) -> float:
    """The learning rate at `step`: constant (official code) or cosine (paper text), either after an
    optional linear warm-up of `warmup` steps."""
    if schedule == "cosine":
        return cosine_lr(step, total, warmup=warmup, base_lr=base_lr)
    return base_lr * min(1.0, (step + 1) / warmup) if warmup else base_lr


# ----------------------------------------------------------------------------------------------
# The update: mini-batches of whole groups, micro-batches that do not change the gradient
# ----------------------------------------------------------------------------------------------

@dataclass
class Batch:
    """What the loss needs for N sequences: ids, masks, old/reference log-probs, advantages."""
    input_ids: torch.Tensor        # [N, P + T] prompt (left-padded) + completion (right-padded)
    attention_mask: torch.Tensor   # [N, P + T]
    completion_mask: torch.Tensor  # [N, T]
    old_logp: torch.Tensor | None  # [N, T] log pi_theta_old, recorded at sampling time (None: one update)
    advantages: torch.Tensor       # [N] (one per rollout) or [N, T] (per token: LOPD)
    ref_logp: torch.Tensor | None = None  # [N, T] the initial student, for the optional KL term
    sampler_logp: torch.Tensor | None = None  # [N, T] the sampler's own (vLLM), for tis_weights

    def _map(self, fn) -> "Batch":
        return Batch(*(None if (t := getattr(self, f.name)) is None else fn(t) for f in dataclasses.fields(self)))

    def select(self, idx) -> "Batch":
        """The sequences at `idx` (a slice or an index tensor)."""
        return self._map(lambda t: t[idx])

    def to(self, device) -> "Batch":  # (dataclasses.astuple would deep-copy every tensor first)
        return self._map(lambda t: t.to(device))

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
    return Batch(input_ids=b.input_ids[:, first:b.input_ids.shape[1] - T + keep_c],
                 attention_mask=b.attention_mask[:, first:b.attention_mask.shape[1] - T + keep_c],
                 completion_mask=cut(b.completion_mask), old_logp=None if b.old_logp is None else cut(b.old_logp),
                 advantages=b.advantages if b.advantages.dim() == 1 else cut(b.advantages),
                 ref_logp=None if b.ref_logp is None else cut(b.ref_logp),
                 sampler_logp=None if b.sampler_logp is None else cut(b.sampler_logp))


def autocast(device: torch.device):
    """bf16 autocast on GPU (weights and optimizer stay fp32); plain fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def batched_logprobs(model, ids, attn, cmask, *, temperature: float, micro_batch: int, device) -> torch.Tensor:
    """Log-probs of the sampled completions under `model`, `micro_batch` rows at a time (0: all at
    once), no grad, on the CPU, 0 outside the completion mask: log pi_theta_old at sampling time
    (Eq. 7), or the initial student's for the KL term."""
    out = torch.zeros(cmask.shape, dtype=torch.float32)
    micro = micro_batch or ids.shape[0]
    for s in range(0, ids.shape[0], micro):
        T = cmask.shape[1]
        with autocast(device):
            lp = policy_logprobs(model, ids[s:s + micro].to(device), attn[s:s + micro].to(device),
                                 T, temperature=temperature)
        out[s:s + micro] = lp.float().cpu()
    return out * cmask


class NonFiniteError(FloatingPointError):
    """A loss or gradient norm that is NaN or infinite: the update is not taken."""


@dataclass(frozen=True)
class LossConfig:
    """Settings of the clipped objective (Eq. 8); defaults are the official code's."""
    clip_low: float = 0.2          # epsilon_low
    clip_high: float = 0.28        # epsilon_high (DAPO's clip-higher)
    clip_c: float | None = 3.0     # dual clip for negative advantages (None: off)
    agg: str = "token-mean"        # see aggregate
    kl_beta: float = 0.0           # k3 KL to the initial student (paper text; 0 in the code)
    max_len: int | None = None     # Dr. GRPO's constant length
    ratio: str = "token"           # "token" (code, Eqs. 7-8) or "sequence" (Alg. 1 line 25)
    tis_cap: float = 2.0           # C of the sampler correction (tis_weights; 0: off; only with sampler_logp)


@dataclass(frozen=True)
class UpdateConfig:
    """How a step's batch becomes optimizer steps (Eq. 8, Table A2); defaults are the official code's."""
    mini_batches: int = 4          # optimizer steps per pass over the batch, each on whole groups
    epochs: int = 1                # passes over the batch
    grad_clip: float = 1.0         # gradient-norm clip per optimizer step
    micro_batch: int = 0           # rows per forward/backward (0: a whole mini-batch); not in the gradient


def loss_norm(mb: Batch, whole: Batch, *, loss: LossConfig, micro_batch: int) -> float:
    """The denominator of a micro-batch's loss (Eq. 8), from the *whole* mini-batch: its token count
    (token-mean), its rollout count (seq-mean-*, and Alg. 1 line 25's 1/G sum_i for ratio="sequence"),
    so that the accumulated gradient is the same for any micro-batch size - a per-micro-batch mean
    would over-weight the tokens of short micro-batches. The official code has that weighting, and
    agg="micro-token-mean" gives it: this micro-batch's token count times the number of
    micro-batches of `micro_batch` rollouts in the mini-batch (0: one micro-batch)."""
    if loss.ratio == "sequence" or loss.agg not in ("token-mean", "micro-token-mean"):
        return float(len(whole))
    if loss.agg == "micro-token-mean":
        return float(mb.completion_mask.sum().clamp(min=1)) * -(-len(whole) // (micro_batch or len(whole)))
    return float(whole.completion_mask.sum().clamp(min=1))


def group_rows(groups: torch.Tensor, group_size: int) -> torch.Tensor:
    """The rows of the given groups: group g holds rows g*G .. g*G+G-1."""
    return (groups[:, None] * group_size + torch.arange(group_size)).flatten()


def mini_batches(batch: Batch, *, group_size: int, update: UpdateConfig, seed: int, rank: int = 0,
                 world_size: int = 1):
    """`update.epochs` passes over the batch, each split into `update.mini_batches` of whole groups
    in an order fixed by `seed`. Yields (whole mini-batch, this rank's share of it, how many
    micro-batches every rank runs): with several ranks (FSDP2, dist.py) each rank takes every
    `world_size`-th group, and all run as many micro-batches as rank 0 (the largest share), since
    FSDP2's collectives need every rank to run as many forwards as the others."""
    order = torch.Generator().manual_seed(seed)
    for _ in range(update.epochs):
        for groups in torch.randperm(len(batch) // group_size, generator=order).chunk(update.mini_batches):
            whole = batch.select(group_rows(groups, group_size))
            mine = whole if world_size == 1 else batch.select(group_rows(groups[rank::world_size], group_size))
            share = len(groups[::world_size]) * group_size  # rank 0's share is the largest
            yield whole, mine, -(-share // (update.micro_batch or share))


def micro_batches(mine: Batch, whole: Batch, *, micro_batch: int, n_micro: int, scale: float, device):
    """`mine`, `micro_batch` rows at a time (0: all at once), trimmed and on `device`, each with the
    weight of its loss: `scale`, or 0 for the padding micro-batches (one row of `whole`) that a rank
    with a smaller share runs so that every rank runs `n_micro` forwards."""
    micro = micro_batch or max(len(mine), 1)
    for i in range(n_micro):
        if i * micro < len(mine):
            yield trim(mine.select(slice(i * micro, (i + 1) * micro))).to(device), scale
        else:
            yield trim(whole.select(slice(0, 1))).to(device), 0.0


def forward_logprobs(model, mb: Batch, *, temperature: float, device) -> torch.Tensor:
    """log pi_theta(y_t | x, y_<t) of a micro-batch's completion tokens, with grad (bf16 autocast on
    a GPU, the result in float32), at the sampling temperature (Eq. 7's numerator)."""
    with autocast(device):
        logp = policy_logprobs(model, mb.input_ids, mb.attention_mask, mb.completion_mask.shape[1],
                               temperature=temperature)
    return logp.float()


def optimizer_step(model, opt, stats: dict, *, grad_clip: float) -> dict:
    """Clip the gradient norm, then step, unless a statistic or the norm is not finite: then the
    weights stay as they were and NonFiniteError is raised. Returns `stats` with the grad norm."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    stats["grad_norm"] = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    bad = {k: v for k, v in stats.items() if not math.isfinite(v)}
    if bad:  # never step on NaN: the weights stay as they were before this mini-batch
        opt.zero_grad(set_to_none=True)
        raise NonFiniteError(f"the loss or gradient is not finite ({', '.join(f'{k} {v}' for k, v in bad.items())})")
    opt.step()
    return stats


def mean_stats(per_step: list[dict]) -> dict:
    """Each statistic averaged over the optimizer steps."""
    totals: dict[str, float] = {}
    for st in per_step:
        for k, v in st.items():
            totals[k] = totals.get(k, 0.0) + v
    return {k: v / len(per_step) for k, v in totals.items()}


def _same(stats: dict) -> dict:
    return stats


def update_policy(model, opt, batch: Batch, *, group_size: int, seed: int, loss: LossConfig,
                  update: UpdateConfig, device, temperature: float = 1.0, rank: int = 0, world_size: int = 1,
                  sum_stats=_same) -> dict:
    """The policy update (Eq. 8, Alg. 1 line 25): mini-batches of whole groups (`mini_batches`),
    each a sum over micro-batches of `policy_loss` normalised by the *whole* mini-batch's token (or
    rollout) count - a per-micro-batch mean would over-weight short micro-batches - then one
    optimizer step with grad-norm clipping. Returns each stat averaged over the optimizer steps.

    With `world_size` ranks (FSDP2, dist.py), every rank holds the whole batch and takes its share
    of each mini-batch; FSDP2 averages the gradients over the ranks, so each loss is multiplied by
    `world_size`: the gradient is the one-process one. `sum_stats` adds up the ranks' statistics.
    Rollouts from another sampler (`batch.sampler_logp`, vLLM) are reweighted by tis_weights."""
    model.train()
    per_step = []
    corrected = batch.sampler_logp is not None and batch.old_logp is not None
    tis = tis_stats(batch.old_logp, batch.sampler_logp, batch.completion_mask, cap=loss.tis_cap) if corrected else {}
    for whole, mine, n_micro in mini_batches(batch, group_size=group_size, update=update, seed=seed, rank=rank,
                                             world_size=world_size):
        opt.zero_grad(set_to_none=True)
        n_tok = float(whole.completion_mask.sum().clamp(min=1))
        stats: dict[str, float] = {}
        for mb, weight in micro_batches(mine, whole, micro_batch=update.micro_batch, n_micro=n_micro,
                                        scale=world_size, device=device):
            logp = forward_logprobs(model, mb, temperature=temperature, device=device)
            # one update per batch (old_logp None): pi_theta_old is the policy right now, the ratio is exactly 1
            old = logp.detach() if mb.old_logp is None else mb.old_logp
            tis_weight = tis_weights(old, mb.sampler_logp, cap=loss.tis_cap) if corrected and loss.tis_cap else None
            value, st = policy_loss(logp, old, mb.advantages, mb.completion_mask, clip_low=loss.clip_low,
                                    clip_high=loss.clip_high, clip_c=loss.clip_c, agg=loss.agg, ref_logp=mb.ref_logp,
                                    kl_beta=loss.kl_beta, max_len=loss.max_len, ratio_level=loss.ratio,
                                    tis_weight=tis_weight,
                                    norm=loss_norm(mb, whole, loss=loss, micro_batch=update.micro_batch))
            (value * weight).backward()
            share = float(mb.completion_mask.sum()) / n_tok  # token-weighted: the sum is the mini-batch's
            for k, v in st.items():
                stats[k] = stats.get(k, 0.0) + (share * v if weight else 0.0)
        per_step.append(optimizer_step(model, opt, sum_stats(stats), grad_clip=update.grad_clip))
    return {**mean_stats(per_step), **tis}


def sft_update(model, opt, batch: Batch, *, seed: int, update: UpdateConfig, device, rank: int = 0,
               world_size: int = 1, sum_stats=_same) -> dict:
    """The SFT baseline's update (§3.1): `update_policy`'s mini-batches (of single rows) with the
    token-mean NLL of the references (`sft_loss`) in place of Eq. 8, at temperature 1."""
    model.train()
    per_step = []
    for whole, mine, n_micro in mini_batches(batch, group_size=1, update=update, seed=seed, rank=rank,
                                             world_size=world_size):
        opt.zero_grad(set_to_none=True)
        n_tok = float(whole.completion_mask.sum().clamp(min=1))
        stats = {"sft_loss": 0.0}
        for mb, weight in micro_batches(mine, whole, micro_batch=update.micro_batch, n_micro=n_micro,
                                        scale=world_size, device=device):
            logp = forward_logprobs(model, mb, temperature=1.0, device=device)
            value = sft_loss(logp, mb.completion_mask, norm=n_tok)
            (value * weight).backward()
            stats["sft_loss"] += value.item() if weight else 0.0
        per_step.append(optimizer_step(model, opt, sum_stats(stats), grad_clip=update.grad_clip))
    return mean_stats(per_step)
