"""Tests against independent oracles: each expected value is computed here, from a formula written
out in the test, a judge or teacher the test scripts, or the models' own naive log-probs - never by
comparing two runs of the code under test with each other (a bug on both sides would pass).

Every setting below is varied away from its default where a dropped setting would otherwise go
unnoticed: a temperature other than 1, several groups under --adv-scale std, several mini-batches,
uneven shares of a two-rank update, per-stage judge temperatures, --keep-last 2. Each test also
asserts that its fixture produced what makes it meaningful (rewards that vary, clipped tokens,
references that differ), so a trivial fixture cannot make it pass."""
import copy
import dataclasses
import json
import math
import re
import types

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import data
import eval as ev
import grpo
import prompts
import ropd
import rubric
import teacher
from test_methods import samples, small_args
from test_ropd import metrics, tiny_args, weights

T = 0.7  # a sampling temperature other than 1: a place that drops it computes something else
CPU = torch.device("cpu")
PROMPTS = ["1+2", "((3*4)-5)+6", "(9-1)*2"]


# ----------------------------------------------------------------------------------------------
# The loss (Eqs. 7-8), written out naively over the whole batch
# ----------------------------------------------------------------------------------------------

def naive_loss(logp, old, adv, mask, *, agg, clip_low=0.2, clip_high=0.28, clip_c=3.0, sampler=None, cap=2.0):
    """Eq. 8 token by token with Python loops over rollouts: PPO-clip with the asymmetric range,
    dual clip for A < 0, each token times min(pi_old / pi_sampler, cap) where a `sampler`'s
    log-probs are given (the official TIS), then the aggregation over the *whole* batch."""
    per_rollout, n_tok = [], mask.sum()
    for i in range(logp.shape[0]):
        terms = []
        for t in range(logp.shape[1]):
            if not mask[i, t]:
                continue
            a = float(adv[i])
            r = torch.exp(logp[i, t] - old[i, t])
            loss_t = torch.maximum(-a * r, -a * torch.clamp(r, 1 - clip_low, 1 + clip_high))
            if a < 0:
                loss_t = torch.minimum(loss_t, torch.tensor(-a * clip_c))
            if sampler is not None:
                loss_t = loss_t * min(math.exp(float(old[i, t]) - float(sampler[i, t])), cap)
            terms.append(loss_t)
        per_rollout.append(torch.stack(terms))
    if agg == "token-mean":
        return sum(x.sum() for x in per_rollout) / n_tok
    assert agg == "seq-mean-token-mean"
    return sum(x.mean() for x in per_rollout) / len(per_rollout)


@pytest.fixture(scope="module")
def student(tiny_world):
    tok = AutoTokenizer.from_pretrained(tiny_world.student_path)
    return AutoModelForCausalLM.from_pretrained(tiny_world.student_path), tok


def rollouts_at(model, tok, *, temperature=T, n=4):
    """Rollouts of PROMPTS sampled at `temperature`, with their old log-probs recorded by ropd."""
    sampling = grpo.SamplingConfig(group_size=n, max_new_tokens=12, temperature=temperature, top_p=1.0)
    return ropd.sample_rollouts(model, tok, PROMPTS, sampling=sampling, seed=3, step=0, template_kwargs={})


def naive_logp(model, ro, temperature):
    with torch.no_grad():
        return grpo.naive_token_logprobs(model, ro.input_ids, ro.attention_mask, ro.completion_ids.shape[1],
                                         temperature) * ro.completion_mask


def sgd_delta(model, fn):
    """The weight change of one SGD step (lr 1) that `fn(copy, opt)` takes: minus the gradient."""
    m = copy.deepcopy(model)
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    fn(m, opt)
    return {k: (v.detach() - dict(model.named_parameters())[k].detach()) for k, v in m.named_parameters()}


def naive_gradient(model, ro, old, adv, *, agg, **tis):
    m = copy.deepcopy(model)
    logp = grpo.naive_token_logprobs(m, ro.input_ids, ro.attention_mask, ro.completion_ids.shape[1], T)
    naive_loss(logp, old, adv, ro.completion_mask, agg=agg, **tis).backward()
    return {k: p.grad for k, p in m.named_parameters()}


def test_recorded_old_logprobs_are_at_the_sampling_temperature(student):
    model, tok = student
    ro = rollouts_at(model, tok)
    assert torch.allclose(ro.old_logp, naive_logp(model, ro, T), atol=1e-5)
    assert not torch.allclose(ro.old_logp, naive_logp(model, ro, 1.0), atol=1e-2)  # T matters here


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize("micro_batch", [0, 3])
def test_the_update_is_the_naive_whole_batch_loss_at_the_temperature(student, agg, micro_batch):
    """One optimizer step of update_policy = one SGD step on Eq. 8 written out by hand over the whole
    batch at T: the learner's log-probs at T, the recorded old ones as the denominator, the loss
    normalised by the whole mini-batch (not per micro-batch of 3 rows), clipping on both sides."""
    model, tok = student
    ro = rollouts_at(model, tok)
    g = torch.Generator().manual_seed(0)
    old = ro.old_logp + 0.4 * torch.randn(ro.old_logp.shape, generator=g) * ro.completion_mask
    adv = torch.randn(len(ro.texts), generator=g)
    batch = grpo.Batch(input_ids=ro.input_ids, attention_mask=ro.attention_mask, completion_mask=ro.completion_mask,
                       old_logp=old, advantages=adv)
    stats = {}

    def step(m, opt):
        stats.update(grpo.update_policy(m, opt, batch, group_size=4, seed=0, loss=grpo.LossConfig(agg=agg),
                                        update=grpo.UpdateConfig(mini_batches=1, grad_clip=1e9,
                                                                 micro_batch=micro_batch),
                                        device=CPU, temperature=T))
    delta = sgd_delta(model, step)
    grad = naive_gradient(model, ro, old, adv, agg=agg)
    assert 0 < stats["clip_frac"] < 1 and stats["dual_clip_frac"] >= 0  # the clipped branches were taken
    for k, d in delta.items():
        assert torch.allclose(d, -grad[k], atol=2e-6, rtol=1e-4), k


def test_rollouts_of_another_sampler_weigh_min_of_pi_old_over_pi_sampler_and_the_cap(student):
    """--sampler vllm: each token's loss times min(pi_old / pi_sampler, 2) (the official TIS),
    computed here token by token, against one SGD step of update_policy in micro-batches of 3;
    the logged ratio statistics against the same numbers; --tis-cap 0 is the uncorrected update."""
    model, tok = student
    ro = rollouts_at(model, tok)
    g = torch.Generator().manual_seed(1)
    sampler = (ro.old_logp + 1.0 * torch.randn(ro.old_logp.shape, generator=g)) * ro.completion_mask
    adv = torch.randn(len(ro.texts), generator=g)
    batch = grpo.Batch(input_ids=ro.input_ids, attention_mask=ro.attention_mask, completion_mask=ro.completion_mask,
                       old_logp=ro.old_logp, advantages=adv, sampler_logp=sampler)
    stats = {}

    def step(m, opt, cap=2.0, b=batch):
        stats.update(grpo.update_policy(m, opt, b, group_size=4, seed=0, loss=grpo.LossConfig(tis_cap=cap),
                                        update=grpo.UpdateConfig(mini_batches=1, grad_clip=1e9, micro_batch=3),
                                        device=CPU, temperature=T))
    delta = sgd_delta(model, step)
    grad = naive_gradient(model, ro, ro.old_logp, adv, agg="token-mean", sampler=sampler, cap=2.0)
    for k, d in delta.items():
        assert torch.allclose(d, -grad[k], atol=2e-6, rtol=1e-4), k
    m = ro.completion_mask.bool()
    ratios = [math.exp(o - s) for o, s in zip(ro.old_logp[m].tolist(), sampler[m].tolist())]
    assert stats["tis_ratio_mean"] == pytest.approx(sum(ratios) / len(ratios), rel=1e-5)
    assert (stats["tis_ratio_min"], stats["tis_ratio_max"]) == pytest.approx((min(ratios), max(ratios)), rel=1e-5)
    assert stats["tis_capped_frac"] == pytest.approx(sum(r > 2 for r in ratios) / len(ratios))
    assert 0 < stats["tis_capped_frac"] < 0.5 and min(ratios) < 0.5  # both sides of 1 were exercised
    off = sgd_delta(model, lambda m_, o: step(m_, o, cap=0.0))
    plain = sgd_delta(model, lambda m_, o: step(m_, o, b=dataclasses.replace(batch, sampler_logp=None)))
    assert all(torch.equal(off[k], plain[k]) for k in off) and stats["tis_capped_frac"] == 0.0


def test_uneven_rank_shares_add_up_to_the_one_process_gradient(student):
    """Two ranks (FSDP2 averages their gradients): 3 groups split 2 / 1, micro-batches of 4 rows, so
    rank 1 runs one real and one zero-weight padding micro-batch. The mean of the two ranks' SGD
    steps must be the naive whole-batch step."""
    model, tok = student
    ro = rollouts_at(model, tok)
    g = torch.Generator().manual_seed(1)
    adv = torch.randn(len(ro.texts), generator=g)
    batch = grpo.Batch(input_ids=ro.input_ids, attention_mask=ro.attention_mask, completion_mask=ro.completion_mask,
                       old_logp=ro.old_logp, advantages=adv)
    update = grpo.UpdateConfig(mini_batches=1, grad_clip=1e9, micro_batch=4)
    shares = [list(grpo.mini_batches(batch, group_size=4, update=update, seed=0, rank=r, world_size=2))[0]
              for r in (0, 1)]
    assert [len(mine) for _, mine, _ in shares] == [8, 4] and [n for _, _, n in shares] == [2, 2]
    deltas = [sgd_delta(model, lambda m, opt, r=r: grpo.update_policy(
        m, opt, batch, group_size=4, seed=0, loss=grpo.LossConfig(), update=update, device=CPU, temperature=T,
        rank=r, world_size=2)) for r in (0, 1)]
    grad = naive_gradient(model, ro, ro.old_logp, adv, agg="token-mean")
    for k in grad:
        assert torch.allclose((deltas[0][k] + deltas[1][k]) / 2, -grad[k], atol=2e-6, rtol=1e-4), k


def test_after_the_first_mini_batch_the_policy_has_moved_from_pi_old(student, monkeypatch):
    """With the recorded pi_old and 2 mini-batches: the first optimizer step sees ratio 1 exactly
    (approx_kl 0), the second a moved policy (approx_kl > 0), so clipping is possible there."""
    model, tok = student
    ro = rollouts_at(model, tok)
    adv = torch.randn(len(ro.texts), generator=torch.Generator().manual_seed(2))
    batch = grpo.Batch(input_ids=ro.input_ids, attention_mask=ro.attention_mask, completion_mask=ro.completion_mask,
                       old_logp=ro.old_logp, advantages=adv)
    per_step = []
    real = grpo.optimizer_step

    def record(m, opt, stats, **kw):
        per_step.append(dict(stats))
        return real(m, opt, stats, **kw)
    m = copy.deepcopy(model)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    monkeypatch.setattr(grpo, "optimizer_step", record)
    grpo.update_policy(m, opt, batch, group_size=4, seed=0, loss=grpo.LossConfig(),
                       update=grpo.UpdateConfig(mini_batches=2), device=CPU, temperature=T)
    assert len(per_step) == 2
    assert per_step[0]["approx_kl"] < 1e-9 and per_step[0]["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert per_step[1]["approx_kl"] > 1e-6


def test_lopd_and_exopd_teacher_logprobs_are_at_the_sampling_temperature(student, tiny_world):
    model, tok = student
    ro = rollouts_at(model, tok)
    t = teacher.load(f"toy:{tiny_world.root}", cache=None)
    teacher_model = AutoModelForCausalLM.from_pretrained(tiny_world.teacher_path)
    expected = (naive_logp(teacher_model, ro, T) - naive_logp(model, ro, T)) * ro.completion_mask
    got = ropd.lopd_reward([{}] * 3, ro, teacher=t, temperature=T).token_advantages
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(got, (naive_logp(teacher_model, ro, 1.0) - naive_logp(model, ro, 1.0)), atol=1e-2)
    # ExOPD with pi_ref = a model other than pi_old: lam (log pi_T - log pi_ref) - (log pi_old - log pi_ref)
    ref = naive_logp(teacher_model, ro, T) * 0.5  # any ref log-probs: the formula is what is checked
    ro_ref = dataclasses.replace(ro, ref_logp=ref)
    got = ropd.exopd_reward([{}] * 3, ro_ref, teacher=t, temperature=T, lam=1.5).token_advantages
    want = (1.5 * (naive_logp(teacher_model, ro, T) - ref) - (naive_logp(model, ro, T) - ref)) * ro.completion_mask
    assert torch.allclose(got, want, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# Advantages (Eq. 6) and rewards aligned with their prompts
# ----------------------------------------------------------------------------------------------

def test_adv_scale_std_with_several_groups_and_a_fallback():
    scores = torch.tensor([0.1, 0.5, 0.9, 0.3, 1.0, 0.0, 0.0, 1.0, 0.2, 0.2, 0.7, 0.4])
    rewards = ropd.Rewards(scores=scores, fallback=[None, "verifier failed", None])
    got = ropd.compute_advantages(rewards, 4, scale="std").view(3, 4).numpy()
    s = scores.view(3, 4).numpy().astype(np.float64)
    want = (s - s.mean(1, keepdims=True)) / np.sqrt(s.var(1, ddof=0, keepdims=True) + 1e-6)  # Alg. 1 line 20
    want[1] = 0.0
    assert np.allclose(got, want, atol=1e-4)
    assert np.allclose(ropd.compute_advantages(rewards, 4, scale="none").view(3, 4).numpy()[[0, 2]],
                       (s - s.mean(1, keepdims=True))[[0, 2]], atol=1e-6)


def test_outcome_rewards_are_scored_against_their_own_prompts_answer():
    """Each rollout right for its own prompt and wrong for every other: a reward scored against a
    neighbour's answer gives 0 where this gives 1."""
    rows = [{"prompt": "1+2", "answer": "3"}, {"prompt": "2*4", "answer": "8"}, {"prompt": "9-4", "answer": "5"}]
    texts = ["Answer: 3", "Answer: 4", "Answer: 8", "Answer: 3", "Answer: 5", "Answer: 8"]
    got = ropd.outcome_reward(rows, types.SimpleNamespace(texts=texts, group_size=2)).scores.tolist()
    assert got == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]


def test_rollout_seeds_differ_by_step_prompt_and_index(student):
    seeds = {ropd.rollout_seed(5, s, i, j) for s in range(3) for i in range(3) for j in range(4)}
    assert len(seeds) == 36
    assert ropd.rollout_seed(5, 1, 0, 0) != ropd.rollout_seed(6, 1, 0, 0)
    model, tok = student
    sampling = grpo.SamplingConfig(group_size=4, max_new_tokens=12, temperature=1.0, top_p=1.0)
    a, b = (ropd.sample_rollouts(model, tok, PROMPTS, sampling=sampling, seed=0, step=s, template_kwargs={},
                                 need_old=False).texts for s in (0, 1))
    assert a != b  # the same prompts at the next step get fresh rollouts


# ----------------------------------------------------------------------------------------------
# The judge (Eqs. 2-4), scripted: the expected rewards are computed here from what it decides
# ----------------------------------------------------------------------------------------------

CRITERIA = [("c1", 5), ("c2", 2), ("c3", 1), ("c4", 4)]
DECIDE = {"c1": lambda t: "right" in t, "c2": lambda t: len(t) > 12, "c3": lambda t: t.startswith("A"),
          "c4": lambda t: "steps" in t}
BLOCK = re.compile(r'<answer-(\w+) index="(\d+)"[^>]*>\n(.*?)\n</answer-\1>', re.S)


def scripted_judge(seen: list):
    """Writes CRITERIA as the rubric; grades each pooled answer by DECIDE, each judgement an object
    keyed by criterion id in reverse order, the entries in reverse answer order, final_score a lie."""
    def complete(chats, stage, attempt, valid=None, tag=None):
        out = []
        for chat in chats:
            seen.append((stage, chat))
            if stage == "rubricator":
                out.append(json.dumps({"schema_version": prompts.RUBRIC_SCHEMA, "rubrics": [
                    {"criterion_id": c, "category": prompts.CATEGORIES[0], "criterion": f"criterion {c}", "points": p}
                    for c, p in CRITERIA]}))
                continue
            entries = [{"answer_index": int(i), "judgement": {c: DECIDE[c](text) for c, _ in reversed(CRITERIA)},
                        "final_score": 99} for _, i, text in BLOCK.findall(chat[-1]["content"])]
            out.append(json.dumps({"schema_version": prompts.VERDICT_SCHEMA, "answers": entries[::-1]}))
        return out
    return complete


def expected_reward(text: str) -> float:
    text = text.rsplit("</think>", 1)[-1].strip()  # the judge sees no reasoning
    return sum(p for c, p in CRITERIA if DECIDE[c](text)) / sum(p for _, p in CRITERIA)


def test_verdicts_keyed_by_id_land_on_the_rubrics_criteria_and_their_owners():
    rollouts = ["A right answer, all steps", "wrong", "A short one", "<think>right steps</think>plain",
                "the right one"]
    refs = ["A right answer with steps", "right"]
    seen: list = []
    res = rubric.ropd_reward(scripted_judge(seen), [rubric.Group("p0", "q?", refs, rollouts)])[0]
    want = [expected_reward(t) for t in rollouts]
    assert res.fallback is None and res.rewards == pytest.approx(want)
    assert len(set(want)) >= 4  # the fixture separates the rollouts
    assert res.reference_scores == pytest.approx([expected_reward(t) for t in refs])
    verifier = [c for stage, c in seen if stage == "verifier"]
    assert len(verifier) == 1 and len(BLOCK.findall(verifier[0][-1]["content"])) == 7
    # no reasoning reaches either stage of the judge
    assert not any("right steps" in m["content"] for _, chat in seen for m in chat)


def test_the_verifiers_block_key_depends_on_its_answers():
    rub = rubric.Rubric(tuple(rubric.Criterion(c, "", f"criterion {c}", p) for c, p in CRITERIA))
    keys = [BLOCK.findall(prompts.verifier_messages("q?", rub, answers)[-1]["content"])[0][0]
            for answers in (["a", "b"], ["a", "c"], ["a", "b"])]
    assert keys[0] != keys[1] and keys[0] == keys[2]
    single = [re.search(r"<response-(\w+)", prompts.single_verifier_messages("q?", rub, a)[-1]["content"])[1]
              for a in ("a", "b")]
    assert single[0] != single[1]


@pytest.mark.parametrize("stage", ["tjudge", "ovd"])
def test_a_holistic_group_scored_only_in_part_falls_back(stage):
    """One rollout the judge never scores validly: its whole group falls back (reward 0, advantage
    0); the other group keeps the scores the judge gave."""
    scale = 9 if stage == "ovd" else 1
    value = {"good": 6, "ok": 3, "fine": 9} if stage == "ovd" else {"good": 0.75, "ok": 0.25, "fine": 1.0}
    schema = prompts.OVD_SCHEMA if stage == "ovd" else prompts.TJUDGE_SCHEMA

    def complete(chats, stage_, attempt, valid=None, tag=None):
        out = []
        for chat in chats:
            text = BLOCK_ANY.findall(chat[-1]["content"])[-1]
            out.append("no score here" if text == "bad" else json.dumps({"schema_version": schema, "score": value[text]}))
        return out
    groups = [rubric.Group("p0", "q0", [], ["good", "bad"]), rubric.Group("p1", "q1", [], ["ok", "fine"])]
    fn = rubric.ovd_reward if stage == "ovd" else rubric.tjudge_reward
    res = fn(complete, groups)
    assert res[0].fallback and res[0].rewards == [0.0, 0.0]
    assert res[1].fallback is None and res[1].rewards == pytest.approx([value["ok"] / scale, value["fine"] / scale])
    adv = ropd.compute_advantages(ropd.Rewards(scores=torch.tensor([x for r in res for x in r.rewards]),
                                               fallback=[r.fallback for r in res]), 2, scale="none")
    assert adv.tolist()[:2] == [0.0, 0.0] and adv.tolist()[2:] == pytest.approx([-0.5 * (value["fine"] - value["ok"]) / scale,
                                                                               0.5 * (value["fine"] - value["ok"]) / scale])


BLOCK_ANY = re.compile(r"<\w+-\w+[^>]*>\n(.*?)\n</\w+-\w+>", re.S)


def test_a_group_short_of_references_falls_back_and_the_default_asks_for_all_k():
    """K = 2 asked, one failed: by default (all K) the group falls back before any judge call; with
    --min-references 1 it is judged."""
    g = rubric.Group("p0", "q?", ["A right answer"], ["right", "wrong"], reference_errors=["reference: timeout"])
    seen: list = []
    res = rubric.ropd_reward(scripted_judge(seen), [g])[0]
    assert res.fallback == "too few references (1 < 2)" and res.rewards == [0.0, 0.0] and seen == []
    res = rubric.ropd_reward(scripted_judge(seen), [g], rubric.JudgeSettings(min_references=1))[0]
    assert res.fallback is None and res.rewards == pytest.approx([expected_reward("right"), expected_reward("wrong")])
    # the run's default is K (--min-references 0), not 1
    args = ropd.parse_args(["--out", "x"])
    assert args.min_references == 0 and ropd.judge_settings(args).min_references == args.references > 1


def test_judge_temperatures_reach_their_own_stage(tiny_world, tmp_path, monkeypatch):
    seen: dict = {}
    real = teacher.Teacher.complete

    def complete(self, chats, **kw):
        seen.setdefault(kw.get("role"), set()).add(kw.get("temperature"))
        return real(self, chats, **kw)
    monkeypatch.setattr(teacher.Teacher, "complete", complete)
    assert ropd.main(tiny_args(tiny_world, tmp_path, "--steps", "1", "--rubricator-temperature", "0.3",
                               "--verifier-temperature", "0.1", "--teacher-temperature", "0.9")) == 0
    assert seen["rubricator"] == {0.3} and seen["verifier"] == {0.1} and seen["reference"] == {0.9}
    seen.clear()
    assert ropd.main(tiny_args(tiny_world, tmp_path, "--steps", "1", "--judge-temperature", "0.4",
                               method="tjudge", out="tj")) == 0
    assert seen["tjudge"] == {0.4}


def test_a_local_teachers_k_references_of_one_prompt_differ(tiny_world):
    t = teacher.load(f"toy:{tiny_world.root}", cache=None)
    refs = teacher.references(t, [data.as_chat(p) for p in PROMPTS], k=4, temperature=1.0, max_tokens=20)
    # (an empty answer is dropped; the barely trained teacher writes garbage, so no two agree by chance)
    assert all(len(set(rs)) == len(rs) >= 2 for rs in refs)


# ----------------------------------------------------------------------------------------------
# Resume, checkpoints, SFT
# ----------------------------------------------------------------------------------------------

def test_after_resume_the_kl_reference_is_the_initial_student(tiny_world, tmp_path, monkeypatch):
    """pi_ref (KL, ExOPD) is the initial student, not the checkpoint a run resumes from; and
    --keep-last 2 leaves the last two checkpoints."""
    run = tmp_path / "run"
    # LOPD: its advantages are never all zero, so step 1 moves the student away from pi_ref
    assert ropd.main(tiny_args(tiny_world, tmp_path, "--steps", "1", "--kl-beta", "0.1", method="lopd")) == 0
    ckpt = weights(run / "checkpoint-000001")  # (--keep-last 2 deletes it by step 3)
    loaded = []
    real = ropd.load_policy

    def load_policy(*a, **kw):
        model, tok = real(*a, **kw)
        loaded.append(model)
        return model, tok
    monkeypatch.setattr(ropd, "load_policy", load_policy)
    assert ropd.main(tiny_args(tiny_world, tmp_path, "--steps", "3", "--kl-beta", "0.1", "--keep-last", "2",
                               "--resume", str(run), method="lopd")) == 0
    policy, ref = loaded[:2]
    initial = weights(tiny_world.student_path)
    assert any(not torch.equal(initial[k], ckpt[k]) for k in initial)  # step 1 moved the student
    assert all(torch.equal(v, initial[k]) for k, v in ref.state_dict().items())
    assert metrics(run)[1]["kl_ref"] > 0
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-000002", "checkpoint-000003"]


def test_sft_targets_are_the_references_with_eos_and_one_step_is_the_naive_nll(student, monkeypatch):
    model, tok = student
    refs = [["2+1=3\nAnswer: 3", "2+1=3\nAnswer: 3"], ["Answer: 13"], ["16\nAnswer: 16"]]
    seen = {}
    real = grpo.sft_update

    def capture(m, opt, batch, **kw):
        seen["batch"] = batch
        return real(m, opt, batch, **kw)
    monkeypatch.setattr(grpo, "sft_update", capture)
    delta = sgd_delta(model, lambda m, opt: ropd.sft_step(
        m, opt, tok, PROMPTS, refs, max_new_tokens=40, update=grpo.UpdateConfig(mini_batches=1, grad_clip=1e9),
        seed=0, world=ropd.dist.World(), template_kwargs={}))
    b = seen["batch"]
    eos = grpo.eos_ids(tok)[0]
    targets = ["2+1=3\nAnswer: 3", "Answer: 13", "16\nAnswer: 16"]  # the duplicate is dropped
    assert len(b) == 3
    for i, text in enumerate(targets):
        ids = b.input_ids[i, -b.completion_mask.shape[1]:][b.completion_mask[i].bool()].tolist()
        assert ids == tok(text, add_special_tokens=False)["input_ids"] + [eos]
    # the naive NLL: every target token (EOS included) of every reference, one mean over all of them
    m = copy.deepcopy(model)
    total, n = 0.0, 0
    for p, text in zip(PROMPTS, targets):
        p_ids = list(tok.apply_chat_template(data.as_chat(p), add_generation_prompt=True, tokenize=True,
                                             return_dict=False))
        t_ids = tok(text, add_special_tokens=False)["input_ids"] + [eos]
        ids = torch.tensor([p_ids + t_ids])
        logits = m(ids).logits[0, len(p_ids) - 1:-1].float()
        total = total - torch.log_softmax(logits, -1).gather(1, torch.tensor(t_ids)[:, None]).sum()
        n += len(t_ids)
    (total / n).backward()
    for k, p in m.named_parameters():
        assert torch.allclose(delta[k], -p.grad, atol=2e-6, rtol=1e-4), k


# ----------------------------------------------------------------------------------------------
# eval.py: the signal analysis's log-ratio, pass@k's interval on a fixture that gets some right
# ----------------------------------------------------------------------------------------------

def test_signal_log_ratio_is_teacher_minus_student(tiny_world, student):
    model, tok = student
    t = teacher.load(f"toy:{tiny_world.root}", cache=None)
    rows = [{"prompt": p, "answer": "0"} for p in PROMPTS]
    sampling = grpo.SamplingConfig(group_size=2, max_new_tokens=10, temperature=T, top_p=1.0)
    out = ev.signal_analysis(model, tok, t, t.as_judge(200), rows, sampling=sampling, k=1, seed=4,
                             teacher_temperature=1.0, teacher_max_tokens=20,
                             settings=rubric.JudgeSettings(min_references=1))
    ro = grpo.sample(model, tok, PROMPTS, n=2, max_new_tokens=10, temperature=T, seed=4)  # the same rollouts
    assert [d["text"] for d in out["rollouts_detail"]] == ro.texts
    mask = ro.completion_mask
    mean = lambda x: ((x * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy()  # noqa: E731
    teacher_model = AutoModelForCausalLM.from_pretrained(tiny_world.teacher_path)
    want_t, want_s = mean(naive_logp(teacher_model, ro, T)), mean(naive_logp(model, ro, T))
    got = out["rollouts_detail"]
    assert np.allclose([d["teacher log-prob"] for d in got], want_t, atol=1e-4)
    assert np.allclose([d["teacher-student log-ratio"] for d in got], want_t - want_s, atol=1e-4)


def test_a_chunked_verifier_with_one_chunk_failing_falls_back():
    """--verifier-chunk 2: 2 references + 3 rollouts in 3 calls. All parsing: the rewards are the
    unchunked ones. One chunk never parsing (it holds 'poison'): the whole group falls back, it is
    not scored from the chunks that did."""
    rollouts, refs = ["A right answer, all steps", "wrong", "the right one"], ["A right answer with steps", "right"]
    settings = rubric.JudgeSettings(verifier_chunk=2)
    res = rubric.ropd_reward(scripted_judge([]), [rubric.Group("p0", "q?", refs, rollouts)], settings)[0]
    assert res.fallback is None and res.rewards == pytest.approx([expected_reward(t) for t in rollouts])
    seen: list = []
    judge = scripted_judge(seen)

    def poisoned(chats, stage, attempt, valid=None, tag=None):
        out = judge(chats, stage, attempt, valid, tag)
        return ["not json" if stage == "verifier" and "poison" in c[-1]["content"] else o for c, o in zip(chats, out)]
    group = rubric.Group("p0", "q?", refs, [*rollouts[:2], "poison right"])
    res = rubric.ropd_reward(poisoned, [group], settings)[0]
    assert sum(stage == "verifier" for stage, _ in seen) >= 3  # the chunks were asked (and re-asked)
    assert res.fallback == "verifier failed" and res.rewards == [0.0, 0.0, 0.0]


def test_the_blind_pool_order_does_not_put_the_references_first():
    """Over many prompts the references land anywhere in the pool: an order that always put them
    first would tell the verifier who wrote what."""
    first_is_student = 0
    for i in range(40):
        answers, owners = rubric.blind_pool(f"p{i}", ["r1", "r2"], ["s1", "s2", "s3", "s4"])
        assert sorted(answers) == ["r1", "r2", "s1", "s2", "s3", "s4"]
        assert all(answers[k] == (["r1", "r2"] if src == "reference" else ["s1", "s2", "s3", "s4"])[j]
                   for k, (src, j) in enumerate(owners))
        first_is_student += owners[0][0] == "student"
    assert 10 < first_is_student < 40  # about 4 in 6 by chance


def test_the_run_gives_each_rollout_the_advantage_its_adv_scale_says(small_world, tmp_path):
    """--adv-scale std must reach the run's advantages: each logged group's advantages are
    (r - mean) / sqrt(var + 1e-6) of its logged rewards, computed here."""
    assert ropd.main(small_args(small_world, tmp_path / "run", "--adv-scale", "std")) == 0
    spread = 0
    for s in samples(tmp_path / "run"):
        r = np.array(s["rewards"], dtype=np.float64)
        want = np.zeros_like(r) if s.get("fallback") else (r - r.mean()) / np.sqrt(r.var() + 1e-6)
        assert np.allclose(s["advantages"], want, atol=2e-4), (s["rewards"], s["advantages"])
        spread += r.std() > 0.05
    assert spread >= 2  # groups whose rewards vary: std-scaling changes their advantages
