"""What each method must do, end to end, on a world where rewards vary within groups (the
small world: the student is right about half the time).

Not "it ran": a step has a gradient; the update raises the log-probability of the rollouts whose
reward is above their group's mean and lowers the others' (computed here from the logged rewards,
independently of the code under test); a group that fell back gets zero advantage; the judge's
own arithmetic is not trusted and it cannot see who wrote what; a resumed run restores the
optimizer's state; LOPD's and ExOPD's advantages are the teacher-student log-ratios."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import data
import grpo
import prompts
import ropd
import rubric
import serve
import teacher


def small_args(world, run, *extra, method="ropd"):
    return ["--method", method, "--world", str(world.root), "--teacher", f"toy:{world.root}", "--out", str(run),
            "--cache", str(run.parent / "cache.sqlite"), "--steps", "1", "--prompts-per-step", "8",
            "--rollouts", "4", "--references", "2", "--mini-batches", "1", "--lr", "1e-5", "--warmup-steps", "0",
            "--max-new-tokens", "24", "--teacher-max-tokens", "40", "--eval-samples", "4", "--eval-every", "0",
            "--save-every", "1", "--log-samples", "-1", *extra]


def samples(run):
    return [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]


def metrics(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def logp_change(world, run, s):
    """How much one step moved each rollout's log-probability: log pi_after(y) - log pi_before(y)."""
    tok = AutoTokenizer.from_pretrained(world.student_path)
    models = [AutoModelForCausalLM.from_pretrained(p) for p in (world.student_path, run / "checkpoint-000001")]
    p_ids, p_mask = grpo.encode_prompts(tok, [s["prompt"]] * len(s["rollouts"]))
    c_ids, c_mask = grpo.encode_completions(tok, s["rollouts"])
    ids, mask = torch.cat([p_ids, c_ids], 1), torch.cat([p_mask, c_mask], 1)
    with torch.no_grad():
        before, after = (grpo.naive_token_logprobs(m, ids, mask, c_ids.shape[1]) for m in models)
    return ((after - before) * c_mask).sum(1).tolist()


@pytest.mark.parametrize("method", ["ropd", "tjudge", "ovd", "grpo"])
def test_the_update_favours_rollouts_above_their_group_mean(method, small_world, tmp_path):
    assert ropd.main(small_args(small_world, tmp_path / "run", method=method)) == 0
    m = metrics(tmp_path / "run")[0]
    assert m["grad_norm"] > 0 and m["reward_std"] > 0 and m["fallbacks"] == 0
    up, down = [], []
    for s in samples(tmp_path / "run"):
        mean = sum(s["rewards"]) / len(s["rewards"])
        # the advantage is the reward minus its own group's mean (Eq. 6), rollout by rollout
        assert s["advantages"] == pytest.approx([r - mean for r in s["rewards"]], abs=2e-4)
        for r, d in zip(s["rewards"], logp_change(small_world, tmp_path / "run", s)):
            (up if r > mean + 1e-6 else down if r < mean - 1e-6 else []).append(d)
    assert len(up) >= 4 and len(down) >= 4
    assert sum(up) / len(up) > 0 > sum(down) / len(down)
    assert sum(up) / len(up) - sum(down) / len(down) > 0.01  # not weight decay: a real, signed step


def test_resume_restores_the_optimizer_state(small_world, tmp_path):
    """Two steps at once, or one then a resume: the same weights. (Adam's moments carry the first
    step's gradient into the second: without them the second step differs.)"""
    two = small_args(small_world, tmp_path / "a" / "run", "--steps", "2", "--lr", "1e-3", method="grpo")
    assert ropd.main(two) == 0
    cut = small_args(small_world, tmp_path / "b" / "run", "--steps", "1", "--lr", "1e-3", method="grpo")
    assert ropd.main(cut) == 0
    assert ropd.main(cut + ["--steps", "2", "--resume", str(tmp_path / "b" / "run")]) == 0
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "run" / "checkpoint-000002").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "b" / "run" / "checkpoint-000002").state_dict()
    first = AutoModelForCausalLM.from_pretrained(tmp_path / "b" / "run" / "checkpoint-000001").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], first[k]) for k in a)  # the second step moved the weights


def _lying(text, chat):
    """A judge that answers right but lies where a real one might: prose around the JSON, the
    verifier's answers out of order and every final_score wrong."""
    tag = prompts.schema_tag(chat)
    if tag == prompts.VERDICT_SCHEMA:
        out = json.loads(text)
        out["answers"] = [dict(a, final_score=99) for a in reversed(out["answers"])]
        text = json.dumps(out)
    return f"Here is my assessment of [1] and [2].\n```json\n{text}\n```\nI hope this helps." if tag else text


def test_the_judge_is_blind_and_its_arithmetic_is_not_trusted(small_world, tmp_path):
    srv = serve.TeacherServer(teacher.load(f"toy:{small_world.root}", cache=None), model_name="judge",
                              transform=_lying, record=True).start()
    try:
        assert ropd.main(small_args(small_world, tmp_path / "run", "--judge", f"openai:judge@{srv.url}/v1",
                                    "--prompts-per-step", "16")) == 0
    finally:
        srv.stop()
    assert metrics(tmp_path / "run")[0]["fallbacks"] == 0
    for s in samples(tmp_path / "run"):  # every reward is recomputed from the booleans, not 99
        rub = rubric.parse_rubric(json.dumps(s["rubric"]))
        assert s["rewards"] == pytest.approx([rubric.score(rub, j) for j in s["judgements"]], abs=1e-4)
    by_prompt = {data.question_text(s["prompt"]): s for s in samples(tmp_path / "run")}
    positions = []
    for body in srv.bodies:
        chat = body["messages"]
        if prompts.schema_tag(chat) != prompts.VERDICT_SCHEMA:
            continue
        user = chat[-1]["content"]
        for word in ("reference", "teacher", "student", "author"):
            assert word not in user.lower()  # nothing in what the verifier is sent says who wrote what
        import toy
        blocks = toy._blocks(user)
        s = by_prompt[blocks["question"][0]]
        positions += [i for i, a in enumerate(blocks["answer"]) if a in s["references"]]
    assert len(set(positions)) >= 3  # the references sit anywhere in the pool, not first


def _fail_some(text, chat):
    """A judge that cannot write a rubric for questions with a '*' in them."""
    q = [m["content"] for m in chat if m["role"] == "user"][0]
    return "I cannot grade this." if prompts.schema_tag(chat) == prompts.RUBRIC_SCHEMA and "*" in q else text


def test_a_group_that_fell_back_gets_zero_advantage(small_world, tmp_path):
    srv = serve.TeacherServer(teacher.load(f"toy:{small_world.root}", cache=None), model_name="judge",
                              transform=_fail_some).start()
    try:
        assert ropd.main(small_args(small_world, tmp_path / "run", "--judge", f"openai:judge@{srv.url}/v1",
                                    "--judge-retries", "0", "--max-fallback-rate", "1", "--prompts-per-step", "16")) == 0
    finally:
        srv.stop()
    fell, kept = [], []
    for s in samples(tmp_path / "run"):
        (fell if s["fallback"] else kept).append(s)
    assert fell and kept and metrics(tmp_path / "run")[0]["fallbacks"] == len(fell)
    for s in fell:
        assert s["fallback"] == "rubricator failed" and s["rewards"] == [0.0] * 4 and s["advantages"] == [0.0] * 4
    for s in kept:
        mean = sum(s["rewards"]) / 4
        assert s["advantages"] == pytest.approx([r - mean for r in s["rewards"]], abs=2e-4)


def test_a_fallen_group_gets_zero_advantage_whatever_its_scores():
    rewards = ropd.Rewards(scores=torch.tensor([0.2, 0.9, 0.7, 0.1, 1.0, 0.0]), fallback=[None, "verifier failed", None])
    adv = ropd.compute_advantages(rewards, 2, scale="none").view(3, 2)
    assert torch.equal(adv[1], torch.zeros(2))
    assert torch.allclose(adv[0], torch.tensor([-0.35, 0.35])) and torch.allclose(adv[2], torch.tensor([0.5, -0.5]))


@pytest.fixture(scope="module")
def rollouts(small_world):
    tok = AutoTokenizer.from_pretrained(small_world.student_path)
    student = AutoModelForCausalLM.from_pretrained(small_world.student_path)
    rows = [p.to_json() for p in small_world.problems("train", n=3)]
    ro = ropd.sample_rollouts(student, tok, [r["prompt"] for r in rows], seed=0, step=0, template_kwargs={},
                              sampling=grpo.SamplingConfig(group_size=3, max_new_tokens=20))
    return rows, ro, student


def test_lopd_and_exopd_advantages_are_the_teacher_student_log_ratios(small_world, rollouts):
    """Computed here with the textbook formula (the full log-softmax of both models), not with the
    code under test: A_t = log pi_T - log pi_old; ExOPD: lam (log pi_T - log pi_ref) - (log pi_old - log pi_ref)."""
    rows, ro, student = rollouts
    t = teacher.load(f"hf:{small_world.teacher_path}", cache=None)
    T = ro.completion_ids.shape[1]
    with torch.no_grad():
        t_lp = grpo.naive_token_logprobs(t.hf_model, ro.input_ids, ro.attention_mask, T)
        s_lp = grpo.naive_token_logprobs(student, ro.input_ids, ro.attention_mask, T)
    expected = (t_lp - s_lp) * ro.completion_mask
    assert (expected.abs() > 0.1).any()
    got = ropd.lopd_reward(rows, ro, teacher=t, temperature=1.0).token_advantages
    assert torch.allclose(got, expected, atol=1e-4)
    ref = s_lp + 0.3 * ro.completion_mask  # a pi_ref that is not the current student
    import dataclasses
    got = ropd.exopd_reward(rows, dataclasses.replace(ro, ref_logp=ref), teacher=t, temperature=1.0, lam=2.0).token_advantages
    assert torch.allclose(got, (2.0 * (t_lp - ref) - (s_lp - ref)) * ro.completion_mask, atol=1e-4)


def test_a_truncated_rollout_earns_no_outcome_reward():
    """Regression: the lenient checker's last-number fallback gave 1.0 to '2+4=6\\n6-6=0\\n0+7='."""
    ro = grpo.Rollouts(prompt_ids=torch.zeros(3, 1), prompt_mask=torch.ones(3, 1), completion_ids=torch.zeros(3, 1),
                       completion_mask=torch.ones(3, 1), group_size=3,
                       texts=["2+4=6\n6-6=0\n0+7=", "2+4=6\n6-6=0\n0+7=7\nAnswer: 7", "Answer: 8"])
    assert ropd.outcome_reward([{"prompt": "((2+4)-6)+7", "answer": "7"}], ro).scores.tolist() == [0.0, 1.0, 0.0]
