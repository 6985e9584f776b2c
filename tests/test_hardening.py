"""Hardening: bad input of every kind is one line and a non-zero exit, nothing already written is
lost, checkpoints run no code, secrets stay out of every file and the terminal, NaN is never
trained on, and the judge's transport survives what real servers do."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import grpo
import ropd
import serve
import teacher
import toy
from test_ropd import metrics, tiny_args

SECRET = "sk-test-SECRET-0123456789abcdef"


@pytest.fixture(scope="module")
def prior_run(tiny_world, tmp_path_factory):
    """A finished 1-step run whose files must survive every refused command."""
    root = tmp_path_factory.mktemp("prior")
    assert ropd.main(tiny_args(tiny_world, root, "--steps", "1")) == 0
    run = root / "run"
    return run, {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


def _files(tmp_path):
    d = tmp_path / "files"
    d.mkdir(exist_ok=True)
    (d / "notutf8.jsonl").write_bytes(b'{"prompt": "caf\xe9 1+1", "answer": "2"}\n')
    (d / "binary.jsonl").write_bytes(bytes(range(256)) * 4)
    (d / "nested.jsonl").write_text('{"prompt": ' + "[" * 100000 + "]" * 100000 + "}\n")
    (d / "surrogate.jsonl").write_text('{"prompt": "1+1 \\ud800", "answer": "2"}\n')
    (d / "dir.jsonl").mkdir(exist_ok=True)
    (d / "corrupt.sqlite").write_bytes(b"this is not a database at all" * 100)
    (d / "afile").write_text("x")
    return d


# (extra flags, what the one line must say); {d} is the folder of bad files
BAD_INPUTS = [
    (["--temperature", "0"], "--temperature must be positive, got 0.0; sampling must be stochastic"),
    (["--top-p", "0"], "--top-p must be positive"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--lr", "-1"], "--lr must be positive, got -1.0"),
    (["--lr", "nan"], "--lr must be positive, got nan"),
    (["--betas", "1.5", "0.9"], "--betas must be in [0, 1)"),
    (["--prompts-per-step", "0"], "--prompts-per-step must be positive"),
    (["--rollouts", "0"], "--rollouts must be positive"),
    (["--rollouts", "1"], "a group of one rollout has zero advantage"),
    (["--mini-batches", "0"], "--mini-batches must be positive"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be positive"),
    (["--save-every", "0"], "--save-every must be positive"),
    (["--micro-batch", "-1"], "--micro-batch must be at least 0"),
    (["--epochs", "0"], "--epochs must be positive"),
    (["--verifier-chunk", "-1"], "--verifier-chunk must be at least 0"),
    (["--steps", "0"], "--steps must be positive"),
    (["--schedule", "cosin"], "invalid choice: 'cosin'"),
    (["--agg", "mean"], "invalid choice: 'mean'"),
    (["--adv-scale", "z"], "invalid choice: 'z'"),
    (["--max-fallback-rate", "1.5"], "--max-fallback-rate must be in [0, 1]"),
    (["--min-criteria", "9", "--max-criteria", "4"], "--min-criteria 9 is above --max-criteria 4"),
    (["--clip-c", "0.5"], "--clip-c must be 0 (off) or above 1"),
    (["--steps", "two"], "argument --steps: invalid int value: 'two'"),
    (["--device", "tpu"], "--device 'tpu' is not a device"),
    (["--device", "cuda"], "--device cuda: no GPU is visible here"),
    (["--data", "{d}/missing.jsonl"], "--data not found"),
    (["--data", "{d}/dir.jsonl"], "is not a file"),
    (["--data", "{d}/notutf8.jsonl"], "notutf8.jsonl:1: not UTF-8 text"),
    (["--data", "{d}/binary.jsonl"], "binary.jsonl:1: not valid JSON"),
    (["--data", "{d}/nested.jsonl"], "nested.jsonl:1: JSON nested too deeply"),
    (["--data", "{d}/surrogate.jsonl"], "surrogate.jsonl:1: the prompt holds a lone surrogate"),
    (["--eval-data", "{d}/missing.jsonl"], "--eval-data not found"),
    (["--cache", "{d}"], "is a directory"),
    (["--cache", "{d}/corrupt.sqlite"], "is not a teacher cache"),
    (["--world", "{d}/typo"], "no toy world there"),
    (["--teacher", "toy:{d}/typo"], "no toy world at"),
    (["--teacher", "gpt-5"], "unknown teacher spec 'gpt-5'"),
    (["--teacher", "hf:{d}/nomodel"], "no model folder at"),
    (["--judge", "openai:"], "names no model"),
    (["--student", "./no/such/student"], "no model folder at ./no/such/student"),
    (["--judge-json-mode"], "--judge-json-mode: the toy backend"),
    (["--resume", "{d}/nowhere"], "no checkpoint there"),
]


@pytest.mark.parametrize("flags,message", BAD_INPUTS, ids=[" ".join(f) for f, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_loses_nothing(flags, message, prior_run, tiny_world, tmp_path, capsys):
    run, before = prior_run
    d = _files(tmp_path)
    flags = [f.replace("{d}", str(d)) for f in flags]
    base = tiny_args(tiny_world, tmp_path, "--out", str(run), "--cache", str(tmp_path / "c.sqlite"))
    if "--resume" not in flags:
        base += ["--resume", str(run)]  # continuing the prior run: a refusal must not touch it
    assert ropd.main(base + flags) == 2
    assert message in _one_line_error(capsys)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_run_folder_is_not_overwritten_without_being_asked(prior_run, tiny_world, tmp_path, capsys):
    run, before = prior_run
    assert ropd.main(tiny_args(tiny_world, tmp_path, "--out", str(run))) == 2
    assert "holds a run already: --resume" in _one_line_error(capsys)
    assert ropd.main(tiny_args(tiny_world, tmp_path, "--out", str(run), "--resume", str(run), "--overwrite")) == 2
    assert "contradict" in _one_line_error(capsys)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    assert ropd.main(tiny_args(tiny_world, tmp_path, "--out", str(copy), "--overwrite", "--steps", "2")) == 0
    assert [m["step"] for m in metrics(copy)] == [1, 2]


def test_dangling_and_corrupt_checkpoints_are_one_line(prior_run, tmp_path, tiny_world, capsys):
    run, _ = prior_run
    dangling = tmp_path / "dangling"
    shutil.copytree(run, dangling)
    (dangling / "latest").write_text("checkpoint-000099")
    assert ropd.main(tiny_args(tiny_world, tmp_path, "--resume", str(dangling))) == 2
    assert "no checkpoint there" in _one_line_error(capsys)
    torn = tmp_path / "torn"
    shutil.copytree(run, torn)
    state = torn / "checkpoint-000001" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    assert ropd.main(tiny_args(tiny_world, tmp_path, "--resume", str(torn))) == 2
    assert "trainer_state.pt cannot be loaded safely" in _one_line_error(capsys)


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['ROPD_PWNED']}",))


def test_a_crafted_checkpoint_cannot_run_code(prior_run, tiny_world, tmp_path, capsys, monkeypatch):
    run, _ = prior_run
    crafted = tmp_path / "crafted"
    shutil.copytree(run, crafted)
    marker = tmp_path / "pwned"
    monkeypatch.setenv("ROPD_PWNED", str(marker))
    torch.save({"step": 1, "data_pos": 3, "evil": _Payload()}, crafted / "checkpoint-000001" / "trainer_state.pt")
    assert ropd.main(tiny_args(tiny_world, tmp_path, "--resume", str(crafted), "--steps", "2")) == 2
    assert "cannot be loaded safely" in _one_line_error(capsys)
    assert not marker.exists()
    # and a genuine checkpoint loads with weights_only=True
    state = torch.load(run / "checkpoint-000001" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 1 and isinstance(state["rng"]["python"][1], list)


def test_nan_is_never_trained_on(tiny_world, tmp_path, capsys):
    """A white-box teacher whose log-probs are NaN (a NaN weight): LOPD's first update is refused,
    in one line, and no checkpoint is written."""
    bad = tmp_path / "nan-teacher"
    model = AutoModelForCausalLM.from_pretrained(tiny_world.teacher_path)
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    model.save_pretrained(bad)
    AutoTokenizer.from_pretrained(tiny_world.teacher_path).save_pretrained(bad)
    capsys.readouterr()  # this test's own loading (a progress bar when it runs first), not the run's
    assert ropd.main(tiny_args(tiny_world, tmp_path, "--teacher", f"hf:{bad}", method="lopd")) == 2
    line = _one_line_error(capsys)
    assert line.startswith("error: step 1: the loss or gradient is not finite") and "last checkpoint: none" in line
    assert not (tmp_path / "run" / "latest").exists()


def test_update_policy_takes_no_step_on_nan(tiny_world):
    model = AutoModelForCausalLM.from_pretrained(tiny_world.student_path)
    tok = AutoTokenizer.from_pretrained(tiny_world.student_path)
    ro = grpo.sample(model, tok, ["1+2", "3*4"], n=2, max_new_tokens=6, seed=0)
    old = grpo.batched_logprobs(model, ro.input_ids, ro.attention_mask, ro.completion_mask, temperature=1.0,
                                micro_batch=0, device=torch.device("cpu"))
    adv = torch.tensor([1.0, float("nan"), 0.0, -1.0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = grpo.Batch(input_ids=ro.input_ids, attention_mask=ro.attention_mask, completion_mask=ro.completion_mask,
                       old_logp=old, advantages=adv)
    with pytest.raises(grpo.NonFiniteError, match="not finite"):
        grpo.update_policy(model, opt, batch, group_size=2, seed=0, loss=grpo.LossConfig(),
                           update=grpo.UpdateConfig(mini_batches=1), device=torch.device("cpu"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------- secrets

def test_secrets_stay_out_of_files_and_the_terminal(tiny_world, tmp_path, capsys, monkeypatch):
    """A server that echoes the Authorization header in its 4xx bodies, and a credential inside the
    teacher's URL: neither reaches samples.jsonl, metrics, args.json, trainer_state.pt, the cache
    or the terminal."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    srv = serve.TeacherServer(teacher.load(f"toy:{tiny_world.root}", cache=None), model_name="toy-judge",
                              faults=[{"status": 400, "echo_headers": True}] * 3).start()
    host = srv.url.replace("http://", "")
    url_secret = "urlpass-0123456789"
    judge = f"openai:toy-judge@http://someone:{url_secret}@{host}/v1"
    try:
        assert ropd.main(tiny_args(tiny_world, tmp_path, "--judge", judge, "--steps", "1")) == 0
        assert ropd.main(tiny_args(tiny_world, tmp_path, "--judge", judge, "--steps", "1", "--out", str(tmp_path / "r2"),
                                   "--max-fallback-rate", "0", "--new-references")) in (0, 2)
    finally:
        srv.stop()
    assert any("you sent" in json.dumps(s) for s in map(json.loads, (tmp_path / "run" / "samples.jsonl").read_text().splitlines()))
    seen = capsys.readouterr()
    blobs = [seen.out, seen.err] + [p.read_bytes().decode("latin-1") for p in tmp_path.rglob("*") if p.is_file()]
    for blob in blobs:
        assert SECRET not in blob and url_secret not in blob


def test_redact():
    os.environ["OPENAI_API_KEY"] = SECRET
    try:
        assert teacher.redact({"a": [f"key {SECRET} in http://u:p4ss@h/v1 and Bearer abcdefghij12"], "n": 3}) == \
            {"a": ["key *** in http://***@h/v1 and Bearer ***"], "n": 3}
    finally:
        del os.environ["OPENAI_API_KEY"]


# ---------------------------------------------------------------- the transport

def _client(srv, tmp_path=None, **kw):
    return teacher.load(f"openai:m@{srv.url}/v1", cache=None if tmp_path is None else tmp_path / "c.sqlite",
                        backoff_base=0.01, **kw)


CHAT = [{"role": "user", "content": "(3+4)*2"}]


def test_a_malformed_retry_after_is_ignored_not_fatal(judge_server):
    judge_server.faults = [{"status": 429, "retry_after": "soon"}]
    c = _client(judge_server)
    assert isinstance(c.complete([CHAT], max_tokens=8)[0][0], str)
    assert c.usage["teacher"].retries == 1


@pytest.mark.parametrize("raw", ['{"id": "chatcmpl-1", "choi', "<html>502 Bad Gateway</html>"])
def test_a_truncated_or_non_json_200_is_retried(judge_server, raw):
    judge_server.faults = [{"raw": raw}]
    c = _client(judge_server)
    assert isinstance(c.complete([CHAT], max_tokens=8)[0][0], str)
    assert (c.usage["teacher"].retries, c.usage["teacher"].failures, judge_server.requests) == (1, 0, 2)


def test_a_refused_connection_says_why(tmp_path):
    c = teacher.load("openai:m@http://127.0.0.1:9/v1", cache=None, retries=0)
    with pytest.raises(teacher.TeacherError) as e:
        c.complete([CHAT], max_tokens=8)
    assert str(e.value).startswith("openai:m@http://127.0.0.1:9/v1: ") and str(e.value).rstrip().endswith(")")
    assert "onnect" in str(e.value)


def test_a_paid_judge_reask_is_reused_on_rerun(judge_server, tmp_path):
    p = toy.make_problems(1, seed=2)[0]
    import prompts
    import rubric
    chat = prompts.rubricator_messages(p.question, [p.solution], ["Answer: 1"])
    judge_server.faults = [{"reply": "I will not."}]  # the first answer does not parse; the re-ask does
    first = _client(judge_server, tmp_path).as_judge(2000, retries=2)
    got = rubric.ask_judge(first, {0: chat}, "rubricator", retries=2, parse=lambda k, t: rubric.parse_rubric(t),
                           errors={})
    assert 0 in got and judge_server.requests == 2
    rerun = _client(judge_server, tmp_path).as_judge(2000, retries=2)
    again = rubric.ask_judge(rerun, {0: chat}, "rubricator", retries=2, parse=lambda k, t: rubric.parse_rubric(t),
                             errors={})
    assert again == got and judge_server.requests == 2  # nothing paid twice


def test_two_processes_open_one_cache_at_the_same_moment(tmp_path):
    path, start = tmp_path / "shared.sqlite", time.time() + 2.0
    code = ("import sys, time; sys.path.insert(0, %r); import teacher\n"
            "while time.time() < %r: pass\n"
            "c = teacher.Cache(%r); c.put(sys.argv[1], 'x', 1, 1); print('ok')") % (
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), start, str(path))
    procs = [subprocess.Popen([sys.executable, "-c", code, f"k{i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(6)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 and o.strip() == "ok" for p, (o, _) in zip(procs, outs)), outs
    assert len(teacher.Cache(path)) == 6


def test_torn_last_log_line_does_not_block_resume(prior_run, tiny_world, tmp_path):
    run, _ = prior_run
    torn = tmp_path / "torn"
    shutil.copytree(run, torn)
    with open(torn / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "lr": 0.0001, "fallb')  # kill -9 mid-write
    assert ropd.main(tiny_args(tiny_world, tmp_path, "--resume", str(torn), "--out", str(torn), "--steps", "2")) == 0
    assert [m["step"] for m in metrics(torn)] == [1, 2]


# ---------------------------------------------------------------- the same run wherever the world is

def test_the_same_world_at_another_path_gives_the_same_references(tiny_world, tmp_path):
    moved = tmp_path / "elsewhere" / "w"
    shutil.copytree(tiny_world.root, moved)
    a = teacher.load(f"toy:{tiny_world.root}", cache=None)
    b = teacher.load(f"toy:{moved}", cache=None)
    assert a.fingerprint == b.fingerprint
    chats = [[{"role": "user", "content": p.question}] for p in toy.make_problems(3, seed=4)]
    assert a.complete(chats, n=2, temperature=1.0, max_tokens=24) == b.complete(chats, n=2, temperature=1.0, max_tokens=24)
    # a sample does not depend on what else shares its batch
    alone = a.complete(chats[2:], n=2, temperature=1.0, max_tokens=24)
    assert alone[0] == a.complete(chats, n=2, temperature=1.0, max_tokens=24)[2]
