"""ropd.py end to end on a tiny toy world: every method, gradient accumulation, resume, failures."""
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


@pytest.mark.parametrize("agg", grpo.AGGREGATIONS)
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
