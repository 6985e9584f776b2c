"""ropd.py end to end on a tiny toy world: every method, gradient accumulation, resume, failures."""
import dataclasses
import importlib.util
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import answers
import data
import grpo
import ropd
import rubric
import serve
import teacher
import toy
from test_grpo import mini_batch_gradient


def tiny_args(world, tmp_path, *extra, method="ropd", out="run"):
    return ["--method", method, "--world", str(world.root), "--teacher", f"toy:{world.root}",
            "--out", str(tmp_path / out), "--cache", str(tmp_path / "cache.sqlite"),
            "--steps", "2", "--prompts-per-step", "3", "--rollouts", "3", "--references", "2",
            "--mini-batches", "2", "--max-new-tokens", "16", "--teacher-max-tokens", "40",
            "--eval-samples", "4", "--eval-every", "0", "--save-every", "1", "--log-samples", "-1",
            "--min-references", "1",  # the tiny world's teacher sometimes writes nothing at all
            *extra]


def metrics(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def weights(path):
    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}


@pytest.mark.parametrize("method", ropd.METHODS)
def test_each_method_end_to_end(method, tiny_world, tmp_path):
    assert ropd.main(tiny_args(tiny_world, tmp_path, method=method)) == 0
    run = tmp_path / "run"
    ms = metrics(run)
    assert [m["step"] for m in ms] == [1, 2]
    ckpt = run / "checkpoint-000002"
    assert (run / "latest").read_text() == ckpt.name
    after, before = weights(ckpt), weights(tiny_world.student_path)
    assert any(not torch.equal(after[k], before[k]) for k in before)  # it trained
    AutoTokenizer.from_pretrained(ckpt)
    summary = json.loads((run / "summary.json").read_text())
    assert 0.0 <= summary["accuracy_after"] <= 1.0
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 3
    if method in ("ropd", "tjudge", "grpo"):
        assert all(0.0 <= r <= 1.0 for s in samples for r in s["rewards"])
        assert all(m["fallbacks"] == 0 for m in ms)
    if method == "ropd":
        for s in samples:  # each reward is its own rollout's weighted pass rate under its rubric
            rub = rubric.parse_rubric(json.dumps(s["rubric"]))
            assert [rubric.score(rub, j) for j in s["judgements"]] == pytest.approx(s["rewards"], abs=1e-4)
            assert len(s["rollouts"]) == 3 and 1 <= len(s["references"]) <= 2
        m = ms[0]
        assert m["usage"]["rubricator"]["calls"] == 3 and m["usage"]["verifier"]["calls"] == 3
        assert {"reward_mean", "reward_std", "teacher_score_mean", "rubric_criteria", "rubric_points",
                "clip_frac", "approx_kl", "completion_len_mean", "seconds"} <= set(m)
    if method == "grpo":
        for s in samples:
            assert s["rewards"] == [float(answers.is_correct(r, s["answer"], strict=True)) for r in s["rollouts"]]
    if method == "lopd":
        assert all(m["reward_mean"] <= 0.5 for m in ms)  # mean teacher-student log-ratio per token


def test_temperature_and_top_p_each_reach_where_they_are_used(tiny_world, tmp_path, monkeypatch):
    """--temperature and --top-p are adjacent floats with the same default: each must reach the
    sampler as itself (a swap at the call in `train` fails here), and the temperature must also
    reach the old-log-prob pass (Eq. 7's denominator), the initial student's (KL) and the update."""
    seen: dict[str, list] = {"sample": [], "logprobs": [], "update": []}
    real_sample, real_logprobs, real_update = grpo.sample, grpo.batched_logprobs, grpo.update_policy

    def sample(model, *args, **kw):
        if model is student[0]:  # the rollouts (not the teacher's references)
            seen["sample"].append((kw["temperature"], kw["top_p"]))
        return real_sample(model, *args, **kw)

    student, real_load_policy = [], ropd.load_policy

    def load_policy(*args, **kw):
        model, tok = real_load_policy(*args, **kw)
        student.append(model)  # the first one loaded is the student, then the initial student (pi_ref)
        return model, tok

    def logprobs(*args, **kw):
        seen["logprobs"].append(kw["temperature"])
        return real_logprobs(*args, **kw)

    def update(*args, **kw):
        seen["update"].append(kw["temperature"])
        return real_update(*args, **kw)

    monkeypatch.setattr(grpo, "sample", sample)
    monkeypatch.setattr(grpo, "batched_logprobs", logprobs)
    monkeypatch.setattr(grpo, "update_policy", update)
    monkeypatch.setattr(ropd, "load_policy", load_policy)
    assert ropd.main(tiny_args(tiny_world, tmp_path, "--steps", "1", "--temperature", "0.7", "--top-p", "0.9",
                               "--kl-beta", "0.1")) == 0
    assert [x for x in seen["sample"] if x[0] != 0.0] == [(0.7, 0.9)]  # the held-out accuracy's are greedy
    assert seen["logprobs"] == [0.7, 0.7]  # pi_theta_old and the initial student, at the sampling temperature
    assert seen["update"] == [0.7]


def _real_batch(world, agg_adv="seq"):
    tok = AutoTokenizer.from_pretrained(world.student_path)
    model = AutoModelForCausalLM.from_pretrained(world.student_path)
    ro = grpo.sample(model, tok, ["1+2", "((3*4)-5)+6", "(9-1)*2"], n=2, max_new_tokens=14, seed=1)
    old = grpo.batched_logprobs(model, ro.input_ids, ro.attention_mask, ro.completion_mask, temperature=1.0,
                                micro_batch=0, device=torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(6, generator=g) if agg_adv == "seq" else torch.randn(ro.completion_mask.shape, generator=g)
    # perturb old log-probs so that some tokens are clipped: the test covers the clipped branches too
    old = old + 0.3 * torch.randn(old.shape, generator=g) * ro.completion_mask
    return model, grpo.Batch(input_ids=ro.input_ids, attention_mask=ro.attention_mask,
                             completion_mask=ro.completion_mask, old_logp=old, advantages=adv)


@pytest.mark.parametrize("agg", grpo.INVARIANT_AGGREGATIONS)
@pytest.mark.parametrize("adv", ["seq", "token"])
def test_gradient_does_not_depend_on_micro_batch_size(tiny_world, agg, adv):
    model, b = _real_batch(tiny_world, adv)
    loss = grpo.LossConfig(agg=agg, max_len=14)
    grads = []
    for micro in (1, 2, len(b)):
        st, grad = mini_batch_gradient(model, b, group_size=2, loss=loss, micro_batch=micro)
        grads.append(grad)
    assert st["clip_frac"] > 0  # some tokens were clipped
    assert torch.allclose(grads[0], grads[2], atol=1e-5) and torch.allclose(grads[1], grads[2], atol=1e-5)
    assert grads[2].abs().sum() > 0


def test_the_official_micro_batch_weighting_depends_on_the_micro_batch(tiny_world):
    """--agg micro-token-mean is micro-batch dependent by design (the official weighting); with a
    micro-batch of the whole mini-batch it is the token-mean."""
    model, b = _real_batch(tiny_world, "seq")
    mask = b.completion_mask.clone()
    for i in range(len(b)):  # rollouts of unequal lengths (the tiny student's all run to the limit)
        mask[i, 2 + 3 * i:] = 0
    b = dataclasses.replace(b, completion_mask=mask)
    grads = {}
    for agg, micro in (("micro-token-mean", 2), ("micro-token-mean", len(b)), ("token-mean", 2)):
        model.zero_grad(set_to_none=True)
        _, grads[agg, micro] = mini_batch_gradient(model, b, group_size=2, loss=grpo.LossConfig(agg=agg),
                                                   micro_batch=micro)
    assert torch.allclose(grads["micro-token-mean", len(b)], grads["token-mean", 2], atol=1e-5)
    assert not torch.allclose(grads["micro-token-mean", 2], grads["token-mean", 2], atol=1e-5)


def _judge_server(world, faults=None):
    t = teacher.load(f"toy:{world.root}", cache=None)
    return serve.TeacherServer(t, model_name="toy-judge", faults=faults).start()


def test_resume_gives_the_same_weights_and_repays_nothing(tiny_world, tmp_path):
    steps = ["--steps", "4"]
    srv = _judge_server(tiny_world)
    judge = ["--judge", f"openai:toy-judge@{srv.url}/v1"]
    try:
        # uninterrupted
        assert ropd.main(tiny_args(tiny_world, tmp_path / "a", *steps, *judge)) == 0
        # interrupted: the judge breaks at step 3 (3 prompts x 2 calls per step are fine before)
        srv.faults = [None] * 12 + [{"reply": "Sorry, I cannot help with that."}] * 100
        assert ropd.main(tiny_args(tiny_world, tmp_path / "b", *steps, *judge)) == 2
        run_b = tmp_path / "b" / "run"
        assert (run_b / "latest").read_text() == "checkpoint-000002"
        srv.faults = []
        before = srv.requests
        assert ropd.main(tiny_args(tiny_world, tmp_path / "b", *steps, *judge, "--resume", str(run_b))) == 0
    finally:
        srv.stop()
    final_a = weights(tmp_path / "a" / "run" / "checkpoint-000004")
    final_b = weights(run_b / "checkpoint-000004")
    for k in final_a:
        assert torch.allclose(final_a[k], final_b[k], atol=1e-6), k
    ms = metrics(run_b)
    assert [m["step"] for m in ms] == [1, 2, 3, 4]
    assert all(m["fallbacks"] == 0 for m in ms)  # the official schemas, over the wire: nothing falls back
    # step 3's references were paid for by the interrupted run: the resumed one replays them
    assert "calls" not in ms[2]["usage"]["reference"] and ms[2]["usage"]["reference"]["cache_hits"] == 6
    # the resumed run judged only steps 3 and 4: 2 steps x 3 prompts x (rubricator + verifier)
    assert srv.requests - before == 12
    ma = metrics(tmp_path / "a" / "run")
    assert [m["reward_mean"] for m in ma] == pytest.approx([m["reward_mean"] for m in ms])


def test_failure_policy_stops_above_the_rate(tiny_world, tmp_path, capsys):
    srv = _judge_server(tiny_world, faults=[{"reply": "```json\n{\"criteria\": []}\n```"}] * 200)
    judge = ["--judge", f"openai:toy-judge@{srv.url}/v1"]
    try:
        assert ropd.main(tiny_args(tiny_world, tmp_path, *judge)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "3/3 groups fell back (rubricator failed)" in err[0]
        assert "rubric has 0 criteria" in err[0]
        assert not (tmp_path / "run" / "latest").exists()  # no step completed, nothing saved
        # tolerated: every group falls back, gets zero advantage, and is counted
        srv.faults = [{"reply": "no JSON here"}] * 200
        assert ropd.main(tiny_args(tiny_world, tmp_path, *judge, "--max-fallback-rate", "1.0",
                                   "--steps", "1", "--out", str(tmp_path / "tolerant"))) == 0
    finally:
        srv.stop()
    m = metrics(tmp_path / "tolerant")[0]
    assert m["fallbacks"] == 3 and m["reward_mean"] == 0.0 and m["pg_loss"] == 0.0


def test_partial_failures_are_counted_and_tolerated(tiny_world, tmp_path):
    # the first rubricator call fails for good (3 attempts), the other groups are judged
    srv = _judge_server(tiny_world, faults=[{"status": 400}] + [None] * 2 + [{"status": 400}] * 2)
    judge = ["--judge", f"openai:toy-judge@{srv.url}/v1"]
    try:
        assert ropd.main(tiny_args(tiny_world, tmp_path, *judge, "--steps", "1")) == 0
    finally:
        srv.stop()
    m = metrics(tmp_path / "run")[0]
    samples = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert m["fallbacks"] == 1 and sum(s["fallback"] == "rubricator failed" for s in samples) == 1
    failed = next(s for s in samples if s["fallback"])
    assert failed["rewards"] == [0.0] * 3 and len(failed["format_errors"]) == 3


def test_data_errors_name_the_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1"}\n{"prompt": "2+2", \n')
    assert ropd.main(["--data", str(bad), "--student", "x"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {bad}:2: not valid JSON (Expecting property name enclosed in double quotes)"
    bad.write_text('{"question": "1+1", "answer": 2}\n{"text": "2+2"}\n')
    with pytest.raises(data.UserError, match=r"bad.jsonl:2: no prompt"):
        data.load_jsonl(str(bad))
    good = tmp_path / "good.jsonl"
    good.write_text('{"problem": "1+1", "answer": 2}\n\n{"prompt": [{"role": "user", "content": "2+2"}]}\n')
    rows = data.load_jsonl(str(good))
    assert rows[0]["answer"] == "2" and rows[1]["answer"] is None
    assert data.question_text(rows[1]["prompt"]) == "2+2"


def test_user_errors_are_one_line(tiny_world, tmp_path, capsys, monkeypatch):
    assert ropd.main(tiny_args(tiny_world, tmp_path, "--teacher", "gpt-5")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown teacher spec 'gpt-5'")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    assert ropd.main(tiny_args(tiny_world, tmp_path, method="lopd", *("--teacher", "anthropic:m"))) == 2
    assert "lopd needs a white-box teacher" in capsys.readouterr().err
    # the refusal names the flag the user gave
    assert ropd.main(tiny_args(tiny_world, tmp_path, method="exopd", *("--teacher", "anthropic:m"))) == 2
    assert "error: --method exopd needs a white-box teacher" in capsys.readouterr().err
    # a served teacher that is not there: one line, before any training
    assert ropd.main(tiny_args(tiny_world, tmp_path, method="lopd", *("--teacher", "openai:m@http://127.0.0.1:9/v1",
                                                                       "--request-timeout", "2"))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --method lopd: openai:m@http://127.0.0.1:9/v1: ") and "onnect" in err[0]
    assert ropd.main(tiny_args(tiny_world, tmp_path, method="lopd", *("--teacher", "openai:m@http://127.0.0.1:9/v1",
                                                                       "--temperature", "0.7"))) == 2
    assert "needs --temperature 1" in capsys.readouterr().err
    assert ropd.main(["--method", "dpo"]) == 2
    assert capsys.readouterr().err.strip() == ("error: argument --method: invalid choice: 'dpo' (choose from "
                                               + ", ".join(f"'{m}'" for m in ropd.METHODS) + ")")


def test_lopd_with_a_served_teacher_equals_the_local_teacher(tiny_world, tmp_path):
    """--teacher openai:MODEL@URL for LOPD: the teacher's log-probs come over the wire (vLLM's
    prompt_logprobs format, here from teacher.py serve) and the run is the local hf: run."""
    srv = serve.TeacherServer(teacher.load(f"hf:{tiny_world.teacher_path}", cache=None),
                                model_name="toy-teacher").start()
    try:
        assert ropd.main(tiny_args(tiny_world, tmp_path, "--teacher", f"openai:toy-teacher@{srv.url}/v1",
                                   method="lopd", out="served")) == 0
    finally:
        srv.stop()
    assert ropd.main(tiny_args(tiny_world, tmp_path, "--teacher", f"hf:{tiny_world.teacher_path}",
                               method="lopd", out="local")) == 0
    served, local = metrics(tmp_path / "served"), metrics(tmp_path / "local")
    assert [m["reward_mean"] for m in served] == pytest.approx([m["reward_mean"] for m in local], abs=1e-4)
    assert served[0]["usage"]["logprobs"]["samples"] == 3 * 3  # one sequence per rollout
    a, b = weights(tmp_path / "served" / "checkpoint-000002"), weights(tmp_path / "local" / "checkpoint-000002")
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_lopd_rejects_a_teacher_with_another_tokenizer(tiny_world, tmp_path, capsys):
    tok = toy.build_tokenizer()
    tok.add_tokens(["<extra>"])
    model = toy.build_model(tok, hidden=16, layers=1, heads=2, seed=0)
    model.save_pretrained(tmp_path / "other")
    tok.save_pretrained(tmp_path / "other")
    assert ropd.main(tiny_args(tiny_world, tmp_path, "--teacher", f"hf:{tmp_path / 'other'}", method="lopd")) == 2
    assert "share the student's tokenizer" in capsys.readouterr().err


def test_exopd_with_lambda_one_is_lopd(tiny_world, tmp_path):
    """ExOPD's reward-extrapolated advantage reduces to LOPD's at lambda = 1 (the pi_ref terms cancel)."""
    assert ropd.main(tiny_args(tiny_world, tmp_path, method="lopd", out="lopd")) == 0
    assert ropd.main(tiny_args(tiny_world, tmp_path, "--exopd-lambda", "1", method="exopd", out="exopd1")) == 0
    assert ropd.main(tiny_args(tiny_world, tmp_path, "--exopd-lambda", "2", method="exopd", out="exopd2")) == 0
    a, b = weights(tmp_path / "lopd" / "checkpoint-000002"), weights(tmp_path / "exopd1" / "checkpoint-000002")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # at step 1 the student is still pi_ref, so lambda * (log pi_T - log pi_ref) - 0: twice the loss
    lopd, exopd2 = metrics(tmp_path / "lopd"), metrics(tmp_path / "exopd2")
    assert exopd2[0]["pg_loss"] == pytest.approx(2 * lopd[0]["pg_loss"], rel=1e-5)
    assert exopd2[0]["grad_norm"] == pytest.approx(2 * lopd[0]["grad_norm"], rel=1e-4)


@pytest.mark.parametrize("flags,role,calls", [
    ((), "rubricator", 3),                                 # one shared rubric per prompt
    (("--per-rollout-rubrics",), "rubricator", 3 * 3),     # Table 6: one per (references, rollout)
    (("--verifier", "per-response"), "verifier", None),    # App. D: one call per pooled answer
])
def test_judge_variants_change_the_calls(tiny_world, tmp_path, flags, role, calls):
    assert ropd.main(tiny_args(tiny_world, tmp_path, "--steps", "1", *flags)) == 0
    m = metrics(tmp_path / "run")[0]
    samples = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    if calls is None:  # K' distinct references + G rollouts per prompt, each graded alone
        calls = sum(len(s["references"]) + 3 for s in samples if not s["fallback"])
    assert m["usage"][role]["calls"] == calls and m["fallbacks"] == 0


# ---------------------------------------------------------------- presets, new flags, GAD, the official diagnostic

def test_preset_paper_sets_table_a2_and_explicit_flags_win():
    a = ropd.parse_args(["--preset", "paper", "--student", "smollm2", "--teacher", "openai:m", "--lr", "3e-6"])
    assert (a.steps, a.schedule, a.warmup_steps, a.betas, a.weight_decay, a.mini_batches) == \
        (531, "cosine", 100, (0.9, 0.95), 0.1, 1)
    assert (a.teacher_temperature, a.rubricator_temperature, a.verifier_temperature) == (0.0, 0.7, 0.0)
    assert (a.adv_scale, a.agg, a.rubric_prompt, a.verifier, a.reward) == \
        ("std", "seq-mean-token-mean", "paper", "per-response", "pass-rate")
    assert a.lr == 3e-6  # given explicitly: it wins
    assert ropd.parse_args(["--student", "smollm2"]).steps == 200  # no preset: the defaults


def test_preset_official_and_the_openai_only_options():
    a = ropd.parse_args(["--preset", "official", "--student", "smollm2", "--teacher", "openai:gpt-5"])
    assert (a.steps, a.mini_batches, a.agg, a.micro_batch, a.reward, a.judge_retry_policy) == \
        (500, 4, "micro-token-mean", 2, "final-score", "official")
    assert (a.rubricator_max_tokens, a.verifier_max_tokens, a.concurrency, a.rpm) == (8192, 4096, 32, 1920.0)
    assert a.judge_reasoning_effort == "high" and a.judge_json_mode is True
    toy_judge = ropd.parse_args(["--preset", "official"])  # the toy judge takes no API options
    assert toy_judge.judge_reasoning_effort is None and toy_judge.judge_json_mode is False
    # with the toy student the run stays toy-sized, the method's settings are the preset's
    assert (toy_judge.steps, toy_judge.lr, toy_judge.mini_batches) == (60, 1e-4, 4)
    ropd.check_args(dataclasses.replace(toy_judge, out="/tmp/ropd-preset-check-never-written"))


def test_help_lists_every_preset_setting(capsys):
    with pytest.raises(SystemExit):
        ropd.parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--preset paper sets: --steps 531," in out and "--betas 0.9 0.95" in out
    assert "--preset official sets: --steps 500," in out and "--agg micro-token-mean, --micro-batch 2" in out


@pytest.mark.parametrize("flags,message", [
    (["--agg", "micro-token-mean", "--micro-batch", "0"], "--agg micro-token-mean weighs each micro-batch"),
    (["--method", "lopd", "--ratio", "sequence"], "--ratio sequence needs one advantage per rollout"),
    (["--method", "tjudge", "--reward", "final-score"], "--reward final-score is the ROPD verifier's own total"),
    (["--verifier-timeout", "0"], "--verifier-timeout must be positive"),
    (["--preset", "fast"], "argument --preset: invalid choice: 'fast'"),
    (["--sampler", "vllm", "--lora-rank", "4"], "--sampler vllm with --lora-rank: the engine is not given LoRA"),
    (["--sampler", "vllm", "--ratio", "sequence"], "the sampler correction is per token; give --tis-cap 0"),
    (["--sampler", "vllm", "--vllm-gpu-memory-utilization", "1.5"], "--vllm-gpu-memory-utilization must be in (0, 1]"),
    (["--sampler", "vllm", "--vllm-kv-cache-gb", "0"], "--vllm-kv-cache-gb must be positive"),
    (["--sampler", "sglang"], "argument --sampler: invalid choice: 'sglang'"),
    (["--sampler", "vllm", "--static-cache"], "--static-cache is the hf sampler's KV cache"),
])
def test_new_settings_are_refused_in_one_line(flags, message, tiny_world, tmp_path, capsys):
    assert ropd.main(tiny_args(tiny_world, tmp_path, *flags)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed in this Python")
def test_the_vllm_sampler_without_vllm_is_refused_in_one_line_before_any_model(tiny_world, tmp_path, capsys):
    """(vLLM lives in its own environment, test_vllm_sampler.py; not in the one the suite runs in.)"""
    assert ropd.main(tiny_args(tiny_world, tmp_path, "--sampler", "vllm")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--sampler vllm needs vLLM, which is not installed in this Python" in err[0]
    assert not (tmp_path / "run").exists()


def test_new_flags_reach_the_judge_and_the_loss(tiny_world, tmp_path):
    a = ropd.parse_args(tiny_args(tiny_world, tmp_path, "--reward", "final-score", "--judge-retry-policy", "official",
                                  "--verifier-timeout", "7", "--agg", "micro-token-mean", "--micro-batch", "2"))
    t, j, reward = ropd.load_judges(a, None, [])
    assert t.timeouts == {"reference": 90.0, "rubricator": 120.0, "verifier": 7.0}
    settings = reward.keywords["score_groups"].keywords["settings"]
    assert settings.reward == "final-score" and settings.retry_policy == "official"
    assert ropd.loss_config(ropd.parse_args(tiny_args(tiny_world, tmp_path, "--tis-cap", "1.5"))).tis_cap == 1.5


def test_gad_end_to_end_keeps_its_discriminator_across_a_resume(tiny_world, tmp_path):
    assert ropd.main(tiny_args(tiny_world, tmp_path, "--steps", "3", method="gad", out="a")) == 0
    ms = metrics(tmp_path / "a")
    assert all(m["gad_loss"] > 0 and 0 <= m["gad_teacher_wins"] <= 1 for m in ms)
    assert ms[0]["gad_loss"] == pytest.approx(0.6931, abs=1e-3)  # a zero head at first: -log sigmoid(0)
    assert all((tmp_path / "a" / f"checkpoint-00000{k}" / "discriminator.pt").is_file() for k in (1, 2, 3))
    # interrupted after step 2, resumed: the same discriminator, so the same rewards and weights
    assert ropd.main(tiny_args(tiny_world, tmp_path, "--steps", "2", method="gad", out="b")) == 0
    assert ropd.main(tiny_args(tiny_world, tmp_path, "--steps", "3", "--resume", str(tmp_path / "b"),
                               method="gad", out="b")) == 0
    mb = metrics(tmp_path / "b")
    assert [m["reward_mean"] for m in mb] == pytest.approx([m["reward_mean"] for m in ms], abs=1e-5)
    wa, wb = weights(tmp_path / "a" / "checkpoint-000003"), weights(tmp_path / "b" / "checkpoint-000003")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_teacher_below_student_is_the_official_diagnostic():
    res = [rubric.GroupResult([0.2, 0.9], reference_scores=[0.5, 1.0]),   # min ref 0.5 < best rollout 0.9
           rubric.GroupResult([0.4, 0.1], reference_scores=[0.5, 0.6]),   # 0.5 > 0.4
           rubric.GroupResult([1.0, 0.3], reference_scores=[0.8, 0.9])]   # 0.8 < 1.0, and 1.0 > every reference
    ro = type("R", (), {"lengths": torch.tensor([3, 3, 3, 3, 3, 3]), "truncated": torch.zeros(6, dtype=torch.bool),
                        "group_size": 2, "texts": [""] * 6})()
    rw = ropd.Rewards(torch.tensor([x for r in res for x in r.rewards]), [None] * 3, res)
    m = ropd.rollout_metrics([{}] * 3, ro, rw, [["r"]] * 3, with_accuracy=False)
    assert m["teacher_below_student"] == pytest.approx(2 / 3)
    assert m["student_beats_references"] == pytest.approx(1 / 3)
