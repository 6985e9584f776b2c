"""grpo.py: the math pinned by independently computed values, and the classic GRPO pitfalls."""
import copy
import math

import pytest
import torch

import grpo
import toy


# ---------------------------------------------------------------- group advantages

def test_group_advantages_no_std_is_mean_centred():
    r = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.2, 0.2, 0.2, 0.2])
    adv = grpo.group_advantages(r, group_size=4)
    # group 1 mean 0.5, group 2 mean 0.2 (computed by hand)
    assert torch.allclose(adv, torch.tensor([0.5, -0.5, 0.0, 0.0, 0, 0, 0, 0]))


def test_group_advantages_std_scaling():
    r = torch.tensor([1.0, 0.0, 0.5, 0.5])
    adv = grpo.group_advantages(r, group_size=4, scale="std", eps=0.0)
    std = math.sqrt((0.25 + 0.25 + 0 + 0) / 4)  # population std (ddof 0), as Alg. 1 line 20
    assert torch.allclose(adv, torch.tensor([0.5, -0.5, 0, 0]) / std)
    eps = 0.01  # inside the square root
    adv = grpo.group_advantages(r, group_size=4, scale="std", eps=eps)
    assert torch.allclose(adv, torch.tensor([0.5, -0.5, 0, 0]) / math.sqrt(0.125 + eps))


@pytest.mark.parametrize("scale", ["none", "std"])
def test_identical_rewards_give_zero_advantage(scale):
    adv = grpo.group_advantages(torch.full((6,), 0.7), group_size=3, scale=scale)
    assert torch.equal(adv, torch.zeros(6))


def test_group_advantages_rejects_unknown_scale():
    with pytest.raises(ValueError, match="scale"):
        grpo.group_advantages(torch.zeros(4), 2, scale="rank")


# ---------------------------------------------------------------- clipping

def _one_token_loss(ratio, adv, **kw):
    logp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss, stats = grpo.policy_loss(logp, torch.zeros(1, 1), torch.tensor([adv]), torch.ones(1, 1), **kw)
    loss.backward()
    return loss.item(), logp.grad.item(), stats


@pytest.mark.parametrize("ratio,adv,expected,clipped", [
    (1.5, 1.0, -1.28, True),    # A > 0, ratio above 1 + clip_high: clipped, no gradient
    (0.5, 1.0, -0.5, False),    # A > 0, ratio below 1 - clip_low: max() keeps the unclipped term
    (0.5, -1.0, 0.8, True),     # A < 0, ratio below 1 - clip_low: clipped at 0.8
    (1.5, -1.0, 1.5, False),    # A < 0, ratio above 1 + clip_high: unclipped (pessimistic) term
    (1.1, 2.0, -2.2, False),    # inside the trust region
])
def test_clipping_both_sides(ratio, adv, expected, clipped):
    loss, grad, stats = _one_token_loss(ratio, adv, clip_low=0.2, clip_high=0.28)
    assert loss == pytest.approx(expected, abs=1e-6)
    assert stats["clip_frac"] == (1.0 if clipped else 0.0)
    # d loss / d logp = -A * ratio when unclipped, 0 when clipped
    assert grad == pytest.approx(0.0 if clipped else -adv * ratio, abs=1e-6)


def test_dual_clip_caps_negative_advantage_loss():
    loss, grad, stats = _one_token_loss(5.0, -1.0, clip_c=3.0)
    assert loss == pytest.approx(3.0) and grad == 0.0 and stats["dual_clip_frac"] == 1.0
    loss, _, stats = _one_token_loss(2.0, -1.0, clip_c=3.0)  # below the cap: untouched
    assert loss == pytest.approx(2.0) and stats["dual_clip_frac"] == 0.0
    loss, _, _ = _one_token_loss(5.0, 1.0, clip_c=3.0)  # positive advantages are never dual-clipped
    assert loss == pytest.approx(-1.28)


# ---------------------------------------------------------------- aggregations

def _agg_example():
    # two rollouts, lengths 3 and 1 (padded to 4); ratio 1, so per-token loss = -A_t
    adv = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 99.0, 99.0, 99.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    z = torch.zeros(2, 4)
    return z, adv, mask


@pytest.mark.parametrize("agg,expected", [
    ("token-mean", -(1 + 2 + 3 + 4) / 4),                 # all valid tokens of the batch
    ("seq-mean-token-mean", -((1 + 2 + 3) / 3 + 4 / 1) / 2),  # per sequence, then over sequences
    ("seq-mean-token-sum-norm", -((1 + 2 + 3) / 4 + 4 / 4) / 2),  # token sums / max_len (=4)
])
def test_aggregations_on_unequal_lengths(agg, expected):
    z, adv, mask = _agg_example()
    loss, _ = grpo.policy_loss(z, z, adv, mask, agg=agg)
    assert loss.item() == pytest.approx(expected)


def test_dr_grpo_max_len_and_norm_override():
    z, adv, mask = _agg_example()
    loss, _ = grpo.policy_loss(z, z, adv, mask, agg="seq-mean-token-sum-norm", max_len=10)
    assert loss.item() == pytest.approx(-((1 + 2 + 3) / 10 + 4 / 10) / 2)
    loss, _ = grpo.policy_loss(z, z, adv, mask, agg="token-mean", norm=8.0)
    assert loss.item() == pytest.approx(-10 / 8)


def test_unknown_aggregation_is_rejected():
    z, adv, mask = _agg_example()
    with pytest.raises(ValueError, match="agg"):
        grpo.policy_loss(z, z, adv, mask, agg="mean")


def test_k3_kl_penalty_value():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    mask = torch.ones(1, 2)
    loss, stats = grpo.policy_loss(logp, logp.clone(), torch.zeros(1), mask, ref_logp=ref, kl_beta=0.1)
    k3 = [math.exp(d) - d - 1 for d in (-0.5, 1.0)]  # d = ref - logp
    assert stats["kl_ref"] == pytest.approx(sum(k3) / 2)
    assert loss.item() == pytest.approx(0.1 * sum(k3) / 2)


def test_padding_and_post_eos_tokens_get_no_gradient():
    logp = torch.randn(2, 5, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    adv = torch.tensor([[0.3] * 5, [-0.7] * 5])
    for agg in grpo.AGGREGATIONS:
        logp.grad = None
        loss, _ = grpo.policy_loss(logp, logp.detach() - 0.05, adv, mask, agg=agg, clip_c=3.0)
        loss.backward()
        assert torch.all(logp.grad[mask == 0] == 0)
        assert torch.all(logp.grad[mask == 1] != 0)


def test_lopd_advantages():
    t = torch.tensor([[-0.1, -2.0, -0.5]])
    s = torch.tensor([[-0.3, -1.0, -9.0]], requires_grad=True)
    a = grpo.lopd_advantages(t, s, torch.tensor([[1, 1, 0]]))
    assert torch.allclose(a, torch.tensor([[0.2, -1.0, 0.0]]))
    assert not a.requires_grad


def test_sft_loss_and_cosine_lr():
    logp = torch.tensor([[-1.0, -3.0, -7.0]])
    assert grpo.sft_loss(logp, torch.tensor([[1, 1, 0]])).item() == pytest.approx(2.0)
    assert grpo.cosine_lr(0, 100, warmup=10, base_lr=1.0) == pytest.approx(0.1)
    assert grpo.cosine_lr(10, 100, warmup=10, base_lr=1.0) == pytest.approx(1.0)
    assert grpo.cosine_lr(55, 100, warmup=10, base_lr=1.0) == pytest.approx(0.5)
    assert grpo.cosine_lr(100, 100, warmup=10, base_lr=1.0, min_ratio=0.1) == pytest.approx(0.1)


# ---------------------------------------------------------------- masks, sampling, log-probs

def test_completion_mask_keeps_first_eos_only():
    eos = 2
    ids = torch.tensor([[5, 6, 2, 2, 2], [5, 2, 7, 2, 8], [5, 6, 7, 8, 9], [2, 2, 2, 2, 2]])
    mask = grpo.completion_mask(ids, [eos])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


@pytest.fixture(scope="module")
def tiny():
    tok = toy.build_tokenizer()
    model = toy.build_model(tok, hidden=32, layers=2, heads=2, seed=0)
    return model, tok


def test_eos_counts_in_loss_when_pad_equals_eos():
    tok = toy.build_tokenizer(pad_is_eos=True)
    assert tok.pad_token_id == tok.eos_token_id
    eos = tok.eos_token_id
    model = toy.build_model(tok, hidden=32, layers=1, heads=2, seed=0)
    # nudge the head towards EOS so rollouts end at different lengths, then get padded with EOS
    bias = torch.zeros(len(tok))
    bias[eos] = 3.5
    model.lm_head.register_forward_hook(lambda mod, inp, out: out + bias)
    r = grpo.sample(model, tok, ["1+2", "(3*4)-5"], n=8, max_new_tokens=12, seed=0)
    ended = [i for i in range(16) if (r.completion_ids[i] == eos).any()]
    padded = [i for i in ended if r.completion_mask[i].sum() < r.completion_ids.shape[1]]
    assert len(padded) >= 2  # some rollouts stopped early and were padded with EOS == pad
    for i in ended:
        first = (r.completion_ids[i] == eos).nonzero()[0].item()
        assert r.completion_mask[i].sum().item() == first + 1  # up to and including the EOS
        assert r.completion_mask[i, first] == 1
    # the EOS token receives gradient: the model is taught to stop
    logp = torch.zeros(r.completion_ids.shape, requires_grad=True)
    loss, _ = grpo.policy_loss(logp, logp.detach(), torch.ones(16), r.completion_mask)
    loss.backward()
    for i in padded:
        first = (r.completion_ids[i] == eos).nonzero()[0].item()
        assert logp.grad[i, first] != 0 and (logp.grad[i, first + 1:] == 0).all()
    # whereas the classic `ids != pad_id` mask would have dropped every EOS
    naive = (r.completion_ids != tok.pad_token_id).long()
    assert all(naive[i].sum() < r.completion_mask[i].sum() for i in ended)


def test_sample_groups_shapes_and_seed(tiny):
    model, tok = tiny
    prompts = ["1+2", "((3*4)-5)+6", "7-1"]
    a = grpo.sample(model, tok, prompts, n=4, max_new_tokens=12, seed=3)
    b = grpo.sample(model, tok, prompts, n=4, max_new_tokens=12, seed=3)
    c = grpo.sample(model, tok, prompts, n=4, max_new_tokens=12, seed=4)
    assert a.completion_ids.shape[0] == 12 and a.prompt_index == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.equal(a.completion_ids, b.completion_ids) and a.texts == b.texts
    assert not torch.equal(a.completion_ids, c.completion_ids)
    # prompts are left-padded: the last prompt column is real for every row
    assert a.prompt_mask[:, -1].all() and not a.prompt_mask[:, 0].all()
    # each rollout's prompt is its own prompt (alignment by construction)
    for i, p in enumerate(a.prompt_index):
        row = a.prompt_ids[i][a.prompt_mask[i].bool()].tolist()
        assert tok.decode(row, skip_special_tokens=True) == prompts[p]
    # texts are the decoded valid ids, special tokens removed
    assert a.texts == grpo.decode(tok, a.completion_ids, a.completion_mask)


def test_token_logprobs_equal_naive(tiny):
    model, tok = tiny
    r = grpo.sample(model, tok, ["1+2", "((3*4)-5)+6"], n=3, max_new_tokens=16, seed=0)
    T = r.completion_ids.shape[1]
    for temp in (1.0, 0.7):
        naive = grpo.naive_token_logprobs(model, r.input_ids, r.attention_mask, T, temp)
        # one tile, tiles that divide neither the positions nor the vocabulary (102), single rows
        for chunk, vocab in ((10_000, 10_000), (7, 17), (1, 64)):
            fast = grpo.token_logprobs(model, r.input_ids, r.attention_mask, T, temperature=temp, chunk_tokens=chunk,
                                       chunk_vocab=vocab)
            assert fast.dtype == torch.float32
            assert torch.allclose(fast, naive, atol=1e-5)


def _model_grads(model, fn, mask):
    model.zero_grad()
    (fn() * mask).sum().backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_token_logprobs_gradient_equals_naive_tied_embeddings(tiny):
    model, tok = tiny
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied
    r = grpo.sample(model, tok, ["1+2", "9*9"], n=2, max_new_tokens=10, seed=1)
    T = r.completion_ids.shape[1]
    fast = _model_grads(model, lambda: grpo.token_logprobs(model, r.input_ids, r.attention_mask, T, temperature=0.8,
                                                           chunk_tokens=5, chunk_vocab=7), r.completion_mask)
    naive = _model_grads(model, lambda: grpo.naive_token_logprobs(model, r.input_ids, r.attention_mask, T, 0.8),
                         r.completion_mask)
    assert torch.allclose(fast, naive, atol=1e-5)


def test_token_logprobs_untied_head_with_bias():
    """A model whose output head is its own Linear with a bias: the bias enters the logits and
    gets its gradient; every parameter's gradient equals the naive formula's."""
    tok = toy.build_tokenizer()
    model = toy.build_model(tok, hidden=32, layers=1, heads=2, seed=0)
    torch.manual_seed(1)
    head = torch.nn.Linear(32, len(tok), bias=True)
    torch.nn.init.normal_(head.bias, std=2.0)
    model.set_output_embeddings(head)
    model.config.tie_word_embeddings = False
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
    ids = torch.randint(3, len(tok), (2, 14))
    attn = torch.ones_like(ids)
    attn[1, :3] = 0  # a left-padded row
    mask = torch.ones(2, 9)
    naive = lambda: grpo.naive_token_logprobs(model, ids, attn, 9, 0.7)  # noqa: E731
    fast = lambda: grpo.token_logprobs(model, ids, attn, 9, temperature=0.7, chunk_tokens=4, chunk_vocab=30)  # noqa: E731
    assert torch.allclose(fast(), naive(), atol=1e-5)
    assert torch.allclose(_model_grads(model, fast, mask), _model_grads(model, naive, mask), atol=1e-5)
    assert head.bias.grad.abs().sum() > 0


def test_token_logprobs_final_logit_softcap_matches_gemma2():
    """Gemma 2 caps its logits in its own forward (tanh(logits / c) * c): our tiles apply the cap
    from the config and give the log-softmax of the model's own logits, values and gradients."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=16, final_logit_softcapping=2.0,
                       attn_implementation="eager")
    model = Gemma2ForCausalLM(cfg)
    ids = torch.randint(0, 50, (2, 12))
    attn = torch.ones_like(ids)

    def reference():  # the model's own (capped) logits, log-softmax at temperature 0.9
        logits = model(input_ids=ids, attention_mask=attn).logits.float()[:, -8:-1] / 0.9
        return torch.log_softmax(logits, -1).gather(-1, ids[:, -7:, None]).squeeze(-1)

    fast = lambda: grpo.token_logprobs(model, ids, attn, 7, temperature=0.9, chunk_tokens=3, chunk_vocab=16)  # noqa: E731
    assert torch.allclose(fast(), reference(), atol=1e-5)
    # the benchmark's and the tests' naive reference caps once, in the model's forward, not twice
    assert torch.allclose(grpo.naive_token_logprobs(model, ids, attn, 7, 0.9), reference(), atol=1e-5)
    mask = torch.ones(2, 7)
    assert torch.allclose(_model_grads(model, fast, mask), _model_grads(model, reference, mask), atol=1e-5)


def _head_reference(h, targets, w, b, temperature, softcap):
    """The textbook formula in float64: full [N, V] logits, log-softmax, gather."""
    z = h.double() @ w.double().T + (0 if b is None else b.double())
    if softcap:
        z = torch.tanh(z / softcap) * softcap
    return torch.log_softmax(z / temperature, -1).gather(-1, targets[:, None]).squeeze(-1)


@pytest.mark.parametrize("temperature,softcap,bias,chunk,vocab", [
    (1.0, None, False, 16, 32),      # tiles that divide neither N = 37 nor V = 101
    (0.6, None, True, 37, 101),      # one tile
    (1.3, 4.0, False, 5, 8),         # softcap and temperature
    (0.8, 2.0, True, 1, 1),          # one position x one vocabulary entry per tile
    (1.0, 3.0, True, 100, 7),
])
def test_head_logprobs_values_and_gradients(temperature, softcap, bias, chunk, vocab):
    torch.manual_seed(0)
    N, H, V = 37, 16, 101
    h = torch.randn(N, H, requires_grad=True)
    w = torch.randn(V, H, requires_grad=True)
    b = torch.randn(V, requires_grad=True) if bias else None
    targets = torch.randint(0, V, (N,))
    targets[:3] = torch.tensor([0, V - 1, vocab % V])  # the first and last ids, and a tile's first
    g = torch.randn(N)  # an arbitrary upstream gradient
    inputs = [x for x in (h, w, b) if x is not None]
    out = grpo.head_logprobs(h, targets, w, bias=b, temperature=temperature, softcap=softcap,
                             chunk_tokens=chunk, chunk_vocab=vocab)
    ref = _head_reference(h, targets, w, b, temperature, softcap)
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), ref, atol=1e-5)
    grads = torch.autograd.grad((out * g).sum(), inputs)
    ref_grads = torch.autograd.grad((ref * g.double()).sum(), inputs)
    for got, want in zip(grads, ref_grads):
        assert got.dtype == torch.float32
        assert torch.allclose(got.double(), want.double(), atol=1e-5)


@pytest.mark.parametrize("softcap,bias", [(None, False), (2.5, True)])
def test_head_logprobs_gradcheck(softcap, bias):
    torch.manual_seed(0)
    h = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(13, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(13, dtype=torch.float64, requires_grad=True) if bias else None
    targets = torch.tensor([0, 12, 4, 5, 4, 9, 3])
    fn = lambda h, w, b=None: grpo.head_logprobs(h, targets, w, bias=b, temperature=0.8, softcap=softcap,
                                                           chunk_tokens=3, chunk_vocab=5)  # noqa: E731
    assert fn(h, w, b).dtype == torch.float64  # float64 in, float64 arithmetic
    assert torch.autograd.gradcheck(fn, (h, w) if b is None else (h, w, b))


def test_head_logprobs_low_precision_frozen_head_and_autocast():
    torch.manual_seed(0)
    h = torch.randn(9, 8).bfloat16().requires_grad_()
    w = torch.randn(30, 8).bfloat16().requires_grad_()
    targets = torch.randint(0, 30, (9,))
    out = grpo.head_logprobs(h, targets, w, chunk_tokens=4, chunk_vocab=8)
    out.sum().backward()
    # float32 arithmetic on the bf16 values, float32 out; gradients in the inputs' dtype
    ref = _head_reference(h.detach(), targets, w.detach(), None, 1.0, None)
    assert out.dtype == torch.float32 and torch.allclose(out.double(), ref, atol=1e-5)
    assert h.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.bfloat16
    hr, wr = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    _head_reference(hr, targets, wr, None, 1.0, None).sum().backward()
    assert torch.allclose(w.grad.double(), wr.grad, atol=1e-2) and torch.allclose(h.grad.double(), hr.grad, atol=1e-2)
    # a frozen head: no gradient for it, the right one for the hidden states
    h32 = h.detach().float().requires_grad_()
    out = grpo.head_logprobs(h32, targets, w.detach().float(), chunk_tokens=4, chunk_vocab=8)
    out.sum().backward()
    assert torch.allclose(h32.grad.double(), hr.grad, atol=1e-5)
    # autocast does not push the tiles' matmuls down to bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = grpo.head_logprobs(h32.detach(), targets, w.detach().float(), chunk_tokens=4, chunk_vocab=8)
    assert out.dtype == torch.float32 and torch.allclose(out.double(), ref, atol=1e-5)


def test_head_logprobs_rejects_bad_input():
    h, w = torch.randn(3, 4), torch.randn(10, 4)
    with pytest.raises(ValueError, match="target ids"):
        grpo.head_logprobs(h, torch.tensor([0, 10, 2]), w)
    with pytest.raises(ValueError, match="shapes"):
        grpo.head_logprobs(h, torch.tensor([0, 1]), w)


def test_importance_ratio_is_one_on_first_update(tiny):
    """old log-probs recorded at sampling time and new ones from the same weights agree: ratio 1."""
    model, tok = tiny
    temp = 0.8
    prompts = ["1+2", "((3*4)-5)+6", "7"]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        ids, attn = grpo.encode_prompts(tok, prompts)
        out = model.generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=temp,
                             top_p=1.0, top_k=0, max_new_tokens=12, output_scores=True,
                             return_dict_in_generate=True, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
    P = out.sequences.shape[1] - len(out.scores)
    comp = out.sequences[:, P:]
    # the sampler's own log-probs (scores are temperature-scaled logits)
    sampler = torch.stack([torch.log_softmax(s.float(), -1).gather(-1, comp[:, t:t + 1]).squeeze(-1)
                           for t, s in enumerate(out.scores)], 1)
    mask = grpo.completion_mask(comp, [tok.eos_token_id])
    attn = torch.cat([grpo.encode_prompts(tok, prompts)[1], mask], 1)
    learner = grpo.token_logprobs(model, out.sequences, attn, comp.shape[1], temperature=temp)
    ratio = torch.exp(learner - sampler)[mask.bool()]
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5)
    # and the loss's own ratio statistic says the same
    _, stats = grpo.policy_loss(learner, sampler, torch.ones(3), mask)
    assert stats["ratio_mean"] == pytest.approx(1.0, abs=1e-5) and stats["clip_frac"] == 0.0


def test_rewards_stay_aligned_with_prompts(tiny):
    """Reward = 'the rollout's prompt id', computed from each rollout's own prompt text; after
    grouping, each group's rewards are its own prompt's, so a per-prompt reward is never shifted."""
    model, tok = tiny
    prompts = ["1+1", "2+2", "3+3", "4+4"]
    r = grpo.sample(model, tok, prompts, n=3, max_new_tokens=4, seed=0)
    rewards = torch.tensor([float(prompts.index(
        tok.decode(r.prompt_ids[i][r.prompt_mask[i].bool()].tolist(), skip_special_tokens=True)))
        for i in range(len(r.texts))])
    assert rewards.view(4, 3).tolist() == [[i] * 3 for i in range(4)]
    assert torch.equal(grpo.group_advantages(rewards, 3), torch.zeros(12))


def test_a_static_kv_cache_gives_the_same_rollouts(tiny):
    model, tok = tiny
    a = grpo.sample(model, tok, ["1+2", "((3*4)-5)+6"], n=2, max_new_tokens=10, row_seeds=[1, 2, 3, 4])
    b = grpo.sample(model, tok, ["1+2", "((3*4)-5)+6"], n=2, max_new_tokens=10, row_seeds=[1, 2, 3, 4],
                    static_cache=True)
    assert a.texts == b.texts and torch.equal(a.completion_mask, b.completion_mask)


def mini_batch_gradient(model, batch: grpo.Batch, *, group_size: int, loss=grpo.LossConfig(),
                        micro_batch: int = 0) -> tuple[dict, torch.Tensor]:
    """The gradient update_policy computes for one mini-batch (the whole batch): an SGD step at lr 0
    and no clipping leave it in .grad. Returns (stats, the flattened gradient)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    update = grpo.UpdateConfig(mini_batches=1, grad_clip=math.inf, micro_batch=micro_batch)
    st = grpo.update_policy(model, opt, batch, group_size=group_size, seed=0, loss=loss, update=update,
                            device=torch.device("cpu"))
    return st, torch.cat([p.grad.flatten() for p in model.parameters()])


def test_one_update_per_batch_needs_no_old_logprob_pass(tiny):
    """With one update per batch pi_theta_old is the policy itself: old log-probs of None mean
    'this very forward', the ratio is exactly 1, and the gradient is the one a separate pass gives."""
    model, tok = tiny
    ro = grpo.sample(model, tok, ["1+2", "3*4"], n=2, max_new_tokens=8, row_seeds=[5, 6, 7, 8])
    old = grpo.batched_logprobs(model, ro.input_ids, ro.attention_mask, ro.completion_mask, temperature=1.0,
                                micro_batch=0, device=torch.device("cpu"))
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    grads = []
    for o in (old, None):
        batch = grpo.Batch(input_ids=ro.input_ids, attention_mask=ro.attention_mask,
                           completion_mask=ro.completion_mask, old_logp=o, advantages=adv)
        st, grad = mini_batch_gradient(model, batch, group_size=2)
        grads.append(grad)
    assert st["ratio_mean"] == 1.0 and st["clip_frac"] == 0.0
    assert torch.allclose(grads[0], grads[1], atol=1e-6) and grads[1].abs().sum() > 0


def test_row_seeded_sampling_draws_from_the_softmax(tiny):
    """The Gumbel-max trick samples softmax(logits / T), and top-p keeps the smallest set of tokens
    whose probability reaches p: 4,000 one-token samples against the model's own probabilities."""
    model, tok = tiny
    ids, mask = grpo.encode_prompts(tok, ["1+"])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[0, -1].float()
    probs = (logits / 2.0).softmax(-1)
    r = grpo.sample(model, tok, ["1+"], n=4000, max_new_tokens=1, temperature=2.0, row_seeds=range(4000))
    freq = torch.bincount(r.completion_ids[:, 0], minlength=len(probs)).float() / 4000
    assert (freq - probs).abs().max() < 4 * (probs * (1 - probs) / 4000).sqrt().max() + 1e-3
    order = probs.argsort(descending=True)
    nucleus = order[:int((probs[order].cumsum(0) < 0.5).sum()) + 1]
    r = grpo.sample(model, tok, ["1+"], n=500, max_new_tokens=1, temperature=2.0, top_p=0.5, row_seeds=range(500))
    assert set(r.completion_ids[:, 0].tolist()) <= set(nucleus.tolist())


def test_rollouts_leave_the_batch_at_their_eos_and_are_the_tokens_of_hugging_face_s_own_loop(tiny):
    """grpo.sample's decoding loop (drop_finished_loop) against generate()'s own, with the same
    per-row seeded sampling at T = 0.8, top-p 0.9: the same tokens, row for row; and fewer rows
    through the model (a finished rollout costs nothing more), counted at the embedding."""
    model, tok = tiny
    prompts, seeds = ["1+2", "((3*4)-5)+6", "(9-1)*2"], list(range(30, 42))
    rows = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, i, o: rows.append(o.shape[0]))
    try:
        ours = grpo.sample(model, tok, prompts, n=4, max_new_tokens=40, temperature=0.8, top_p=0.9, row_seeds=seeds)
        ours_rows, rows[:] = sum(rows), []
        ids, mask = grpo.encode_prompts(tok, prompts)
        ids, mask = ids.repeat_interleave(4, 0), mask.repeat_interleave(4, 0)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=40, pad_token_id=grpo.pad_id(tok),
                                 eos_token_id=grpo.eos_ids(tok, model), use_cache=True,
                                 **{**grpo.sampling_kwargs(temperature=0.8, top_p=0.9, row_seeds=seeds, device="cpu"),
                                    "custom_generate": None})  # Hugging Face's own loop
        theirs_rows = sum(rows)
    finally:
        hook.remove()
    theirs = out[:, ids.shape[1]:]
    m = grpo.completion_mask(theirs, grpo.eos_ids(tok, model))
    assert [r[k.bool()].tolist() for r, k in zip(ours.completion_ids, ours.completion_mask)] == \
        [r[k.bool()].tolist() for r, k in zip(theirs, m)]
    lengths = ours.lengths.tolist()
    assert min(lengths) < max(lengths)  # rollouts ended at different steps
    # forward t writes token t of every rollout still running: a rollout of n tokens is in n forwards
    assert ours_rows == sum(lengths) < theirs_rows == 12 * theirs.shape[1]


def test_a_row_seeded_sample_does_not_depend_on_its_batch(tiny):
    model, tok = tiny
    a = grpo.sample(model, tok, ["1+2", "(9-1)*2"], n=2, max_new_tokens=12, row_seeds=[11, 12, 13, 14])
    b = grpo.sample(model, tok, ["(9-1)*2", "7-3", "1+2"], n=2, max_new_tokens=12, row_seeds=[13, 14, 1, 2, 11, 12])
    assert a.texts == b.texts[4:] + b.texts[:2]


def test_the_update_clips_the_gradient_norm(tiny):
    """With plain SGD at lr 1, one step moves the weights by exactly the clipped gradient: its
    norm is `grad_clip`, while the logged grad_norm is the norm before clipping."""
    model, tok = tiny
    model = copy.deepcopy(model)
    ro = grpo.sample(model, tok, ["1+2", "3*4"], n=2, max_new_tokens=8, row_seeds=[5, 6, 7, 8])
    batch = grpo.Batch(input_ids=ro.input_ids, attention_mask=ro.attention_mask, completion_mask=ro.completion_mask,
                       old_logp=None, advantages=torch.tensor([1.0, -1.0, 0.5, -0.5]))
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    st = grpo.update_policy(model, opt, batch, group_size=2, seed=0, loss=grpo.LossConfig(),
                            update=grpo.UpdateConfig(mini_batches=1, grad_clip=0.01), device=torch.device("cpu"))
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)]).norm().item()
    assert st["grad_norm"] > 0.05  # the raw gradient is larger than the clip
    assert moved == pytest.approx(0.01, rel=1e-3)


# ---------------------------------------------------------------- Eq. 6, Alg. 1 line 25, the official micro-batch weighting

def test_group_advantages_eq6_divides_by_std_plus_eps():
    r = torch.tensor([1.0, 0.0, 0.5, 0.5])
    std = math.sqrt(0.125)  # population std of the group
    adv = grpo.group_advantages(r, group_size=4, scale="eq6", eps=0.01)  # eps outside the root (Eq. 6)
    assert torch.allclose(adv, torch.tensor([0.5, -0.5, 0, 0]) / (std + 0.01))
    alg1 = grpo.group_advantages(r, group_size=4, scale="std", eps=0.01)
    assert not torch.allclose(adv, alg1)  # the two forms differ by where eps sits
    assert torch.equal(grpo.group_advantages(torch.full((4,), 0.3), 4, scale="eq6"), torch.zeros(4))


def test_sequence_ratio_is_one_per_rollout_as_alg1_line_25():
    # rollout 0: 2 tokens, log-ratios 0.1 and 0.2 -> rho = e^0.3 = 1.3499 > 1.28: clipped (A > 0)
    # rollout 1: 1 token, log-ratio -0.05 -> rho = 0.9512, A < 0: -A rho vs -A clip = -A 0.9512 (inside)
    old = torch.zeros(2, 3)
    logp = torch.tensor([[0.1, 0.2, 7.0], [-0.05, 9.0, 9.0]], requires_grad=True)  # padding is ignored
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    adv = torch.tensor([1.0, -2.0])
    loss, st = grpo.policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, ratio_level="sequence")
    rho0, rho1 = math.exp(0.3), math.exp(-0.05)
    expected = (max(-1.0 * rho0, -1.0 * 1.28) + max(2.0 * rho1, 2.0 * max(rho1, 0.8))) / 2
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    # rollout 0 is clipped: no gradient; rollout 1: d/dlogp (2 rho1 / 2) = rho1 on its one token
    assert torch.allclose(logp.grad, torch.tensor([[0.0, 0.0, 0.0], [rho1, 0.0, 0.0]]))
    assert st["clip_frac"] == pytest.approx(2 / 3)  # rollout 0's two tokens of three
    token, _ = grpo.policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    assert token.item() != pytest.approx(expected)
    with pytest.raises(ValueError, match="one advantage per rollout"):
        grpo.policy_loss(logp, old, torch.ones(2, 3), mask, ratio_level="sequence")


def test_micro_token_mean_is_the_official_micro_batch_weighting():
    """The official weighting: token-mean within each micro-batch of 2 rollouts, micro-batches
    averaged; computed here by hand, against the micro-batch-invariant token-mean."""
    lengths = [3, 1, 2, 4]
    mask = torch.tensor([[1] * n + [0] * (4 - n) for n in lengths])
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0])
    logp = torch.zeros(4, 4)
    whole = grpo.Batch(torch.zeros(4, 5, dtype=torch.long), torch.ones(4, 5, dtype=torch.long), mask,
                       torch.zeros(4, 4), adv)
    total = {}
    for agg in ("micro-token-mean", "token-mean"):
        cfg = grpo.LossConfig(agg=agg)
        total[agg] = 0.0
        for i in (0, 2):
            mb = whole.select(slice(i, i + 2))
            norm = grpo.loss_norm(mb, whole, loss=cfg, micro_batch=2)
            total[agg] += grpo.policy_loss(logp[i:i + 2], logp[i:i + 2], mb.advantages, mb.completion_mask,
                                           agg=agg, norm=norm)[0].item()
    # ratio 1: per-token loss -A; micro-batch 1 = rows 0-1 (4 tokens), 2 = rows 2-3 (6 tokens)
    by_hand = (-(1.0 * 3 - 1.0 * 1) / 4 + -(0.5 * 2 + 2.0 * 4) / 6) / 2
    assert total["micro-token-mean"] == pytest.approx(by_hand)
    assert total["token-mean"] == pytest.approx(-(3 - 1 + 1 + 8) / 10)
    assert by_hand != pytest.approx(total["token-mean"])
