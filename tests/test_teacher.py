"""teacher.py: the real openai and anthropic SDKs against `teacher.py serve` on 127.0.0.1 - normal
replies, 429s, 500 storms, slow servers, fatal errors, the cache - and the local backends."""
import threading
import time

import pytest

import prompts
import rubric
import serve
import teacher
import toy

SECRET = "sk-test-DO-NOT-LEAK-1234567890"


@pytest.fixture(scope="module")
def toy_teacher(tiny_world):
    return teacher.load(f"toy:{tiny_world.root}", cache=None)


@pytest.fixture
def server(toy_teacher):
    srv = serve.TeacherServer(toy_teacher, model_name="toy-teacher", record=True).start()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)


def client(kind, srv, tmp_path=None, **kw):
    url = srv.url + "/v1" if kind == "openai" else srv.url
    kw.setdefault("backoff_base", 0.01)
    cache = tmp_path / "cache.sqlite" if tmp_path is not None else None
    return teacher.load(f"{kind}:toy-teacher@{url}", cache=cache, **kw)


CHAT = [{"role": "user", "content": "(3+4)*2"}]


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_normal_reply_equals_the_served_backend(kind, server, toy_teacher):
    c = client(kind, server)
    got = c.complete([CHAT], n=2, temperature=1.0, max_tokens=24)
    direct = toy_teacher.complete([CHAT], n=2, temperature=1.0, max_tokens=24)
    if kind == "openai":  # one request with n=2, answered with the backend's own 2 samples
        assert got == direct and server.requests == 1
    else:  # no n and no temperature in the messages API: two requests, each the server's sample 0
        direct = toy_teacher.complete([CHAT], n=1, temperature=None, max_tokens=24)
        assert got[0] == [direct[0][0]] * 2 and server.requests == 2
    u = c.usage["teacher"]
    # the counts the server reported (a sampled text may be empty: its own count, not "> 0")
    count = lambda s: len(toy_teacher.tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    assert u.samples == 2 and u.retries == 0 and u.input_tokens == server.requests * count(CHAT[0]["content"])
    assert u.output_tokens == sum(count(t) for t in got[0])


def test_stop_ends_keep_alive_connections(toy_teacher):
    """A handler thread left waiting on a keep-alive connection would hold the teacher model until
    interpreter exit, and freeing torch tensors from it then aborts the process (exit code 134)."""
    srv = serve.TeacherServer(toy_teacher, model_name="toy-teacher").start()
    before = set(threading.enumerate())
    client("openai", srv).complete([CHAT], max_tokens=4)  # the SDK keeps its connection open
    handlers = [t for t in threading.enumerate() if t not in before]
    assert handlers and all(t.is_alive() for t in handlers)  # waiting for the next request
    srv.stop()
    assert not any(t.is_alive() for t in handlers) and srv._open == {}


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_judge_prompt_through_the_wire(kind, server):
    p = toy.make_problems(1, seed=2)[0]
    chat = prompts.rubricator_messages(p.question, [p.solution], ["Answer: 1"])
    text = client(kind, server).complete([chat], max_tokens=2000, role="rubricator")[0][0]
    assert text == toy.toy_judge(chat)
    assert rubric.parse_rubric(text).maximum_score > 0


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_429_then_success_is_retried_and_counted(kind, server):
    server.faults = [{"status": 429, "retry_after": 0}]
    c = client(kind, server)
    assert c.complete([CHAT], max_tokens=8)[0][0] is not None
    u = c.usage["teacher"]
    assert (u.calls, u.retries, u.failures, server.requests) == (2, 1, 0, 2)


def test_retry_after_is_honoured(server):
    server.faults = [{"status": 429, "retry_after": 1}]
    c = client("openai", server)
    t0 = time.monotonic()
    c.complete([CHAT], max_tokens=8)
    assert time.monotonic() - t0 >= 1.0  # backoff alone would have waited ~0.01 s


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_500_storm_exhausts_retries_with_a_clear_error(kind, server):
    server.faults = [{"status": 500}] * 10
    c = client(kind, server, retries=2)
    with pytest.raises(teacher.TeacherError, match="HTTP 500"):
        c.complete([CHAT], max_tokens=8)
    assert server.requests == 3  # 1 + 2 retries, then stop: no hang
    got = c.complete([CHAT], max_tokens=8, return_exceptions=True)[0][0]
    assert isinstance(got, Exception) and c.usage["teacher"].failures == 2


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_slow_server_timeout_is_honoured(kind, server):
    server.faults = [{"delay": 3.0}]
    c = client(kind, server, timeout=0.5, retries=0)
    with pytest.raises(teacher.TeacherError, match="(?i)timeout|timed out"):  # not the 3 s answer
        c.complete([CHAT], max_tokens=8)
    server.faults = [{"delay": 3.0}]
    c = client(kind, server, timeout=0.5, retries=1)  # the retry finds a fast server
    assert isinstance(c.complete([CHAT], max_tokens=8)[0][0], str)
    assert c.usage["teacher"].retries == 1


@pytest.mark.parametrize("status", [401, 404])
def test_fatal_errors_stop_at_once_without_leaking_the_key(status, server, tmp_path):
    server.faults = [{"status": status}] * 3
    c = client("openai", server, tmp_path)
    with pytest.raises(teacher.TeacherError) as e:
        c.complete([CHAT], max_tokens=8, return_exceptions=True)  # fatal raises regardless
    assert server.requests == 1 and f"HTTP {status}" in str(e.value) and SECRET not in str(e.value)
    assert SECRET.encode() not in (tmp_path / "cache.sqlite").read_bytes()


def test_second_identical_run_is_served_from_the_cache(server, tmp_path):
    chats = [[{"role": "user", "content": q.question}] for q in toy.make_problems(4, seed=3)]
    first = client("openai", server, tmp_path).complete(chats, n=3, temperature=1.0, max_tokens=24)
    before = server.requests
    again = client("openai", server, tmp_path)  # a new process would look the same
    second = again.complete(chats, n=3, temperature=1.0, max_tokens=24)
    assert second == first and server.requests == before
    assert again.usage["teacher"].cache_hits == 12 and again.usage["teacher"].calls == 0
    # asking for more samples pays only for the new ones
    more = again.complete(chats, n=4, temperature=1.0, max_tokens=24)
    assert [m[:3] for m in more] == first and server.requests == before + 4


def test_requests_run_concurrently(server):
    server.faults = [{"delay": 0.3}] * 8
    c = client("openai", server, concurrency=8)
    chats = [[{"role": "user", "content": f"{k}+1"}] for k in range(8)]
    c.complete(chats, max_tokens=8)
    assert server.max_busy >= 4  # answered side by side (serial would be 1), whatever the machine's load


def test_rate_limiter_blocks_beyond_rpm():
    lim = teacher.RateLimiter(rpm=3)
    for _ in range(3):
        lim.acquire()
    t = threading.Thread(target=lim.acquire, daemon=True)
    t.start()
    t.join(0.3)
    assert t.is_alive()  # the 4th request in the same minute waits


def test_circuit_breaker_opens_after_consecutive_failures(server):
    server.faults = [{"status": 500}] * 100
    c = client("openai", server, retries=0, breaker_threshold=2, breaker_cooldown=60)
    out = c.complete([CHAT] * 1 + [[{"role": "user", "content": "x"}]], max_tokens=8, return_exceptions=True)
    out += c.complete([[{"role": "user", "content": "y"}]], max_tokens=8, return_exceptions=True)
    assert all(isinstance(o[0], Exception) for o in out)
    assert server.requests == 2 and "circuit breaker" in str(out[-1][0])


@pytest.mark.parametrize("spec,message", [
    ("gpt-4o", "unknown teacher spec 'gpt-4o'"),
    ("mistral:large", "unknown teacher spec 'mistral:large'"),
    ("openai:", "names no model"),
    ("hf:/no/such/model", "hf:/no/such/model: no model folder at /no/such/model"),
])
def test_bad_specs_give_one_clear_line(spec, message):
    with pytest.raises(teacher.TeacherError, match=message):
        teacher.load(spec, cache=None)


def test_missing_keys(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(teacher.TeacherError, match="OPENAI_API_KEY is not set"):
        teacher.load("openai:gpt-4o-mini", cache=None)
    with pytest.raises(teacher.TeacherError, match="ANTHROPIC_API_KEY is not set"):
        teacher.load("anthropic:claude-sonnet-4-5", cache=None)
    # a local OpenAI-compatible server needs no key
    assert teacher.load("openai:m@http://127.0.0.1:9/v1", cache=None).model == "m"


def test_hf_teacher_logprobs_match_the_student_side(tiny_world):
    import torch

    import grpo
    t = teacher.load(f"hf:{tiny_world.teacher_path}", cache=None)
    r = grpo.sample(t.hf_model, t.tokenizer, ["1+2", "(4*5)-6"], n=2, max_new_tokens=10, seed=0)
    T = r.completion_ids.shape[1]
    got = t.token_logprobs(r.input_ids, r.attention_mask, T, temperature=0.9)
    want = grpo.naive_token_logprobs(t.hf_model, r.input_ids, r.attention_mask, T, 0.9)
    assert torch.allclose(got, want.detach(), atol=1e-5)


def test_local_sampling_is_reproducible_and_cached(tiny_world, tmp_path):
    a = teacher.load(f"toy:{tiny_world.root}", cache=tmp_path / "c.sqlite")
    chats = [[{"role": "user", "content": "(1+2)*3"}], [{"role": "user", "content": "9-8"}]]
    x = a.complete(chats, n=3, temperature=1.0, max_tokens=20)
    b = teacher.load(f"toy:{tiny_world.root}", cache=None)
    assert b.complete(chats, n=3, temperature=1.0, max_tokens=20) == x  # same seeds without a cache
    a2 = teacher.load(f"toy:{tiny_world.root}", cache=tmp_path / "c.sqlite")
    assert a2.complete(chats, n=3, temperature=1.0, max_tokens=20) == x
    assert a2.usage["teacher"].cache_hits == 6 and a2.usage["teacher"].samples == 0
    # a retry with a new first_sample gets fresh samples, not the cached ones
    fresh = a2.complete(chats, n=1, temperature=1.0, max_tokens=20, first_sample=3)
    assert a2.usage["teacher"].samples == 2 and all(isinstance(f[0], str) for f in fresh)


# -- LOPD with a served teacher: vLLM's prompt log-probs over the wire --------------------------

def test_parse_prompt_logprobs_reads_vllms_format():
    # the shape vLLM 0.32 returns for prompt_logprobs=1 (the prompt token, plus the top-1 when it differs)
    entries = [None, {"10": {"logprob": -1.5, "rank": 3, "decoded_token": "$"},
                      "7": {"logprob": -0.2, "rank": 1, "decoded_token": "!"}},
               {"11": {"logprob": -0.25, "rank": 1, "decoded_token": "%"}}]
    assert teacher.parse_prompt_logprobs(entries, [3, 10, 11]) == ([-1.5, -0.25], ["$", "%"])
    with pytest.raises(teacher.TeacherError, match="no prompt log-probs"):
        teacher.parse_prompt_logprobs(None, [3, 10, 11])
    with pytest.raises(teacher.TeacherError, match="no entry for token 11 at position 2"):
        teacher.parse_prompt_logprobs(entries[:2] + [{"12": {"logprob": -1.0}}], [3, 10, 11])


def test_served_teacher_logprobs_equal_the_local_model(tiny_world, tmp_path):
    import torch

    import grpo
    local = teacher.load(f"hf:{tiny_world.teacher_path}", cache=None)
    srv = serve.TeacherServer(local, model_name="toy-teacher").start()
    try:
        served = client("openai", srv, tmp_path)
        served.check_tokenizer(local.tokenizer)  # same tokenizer: no error
        r = grpo.sample(local.hf_model, local.tokenizer, ["1+2", "(4*5)-6", "7"], n=2, max_new_tokens=12, seed=0)
        T = r.completion_ids.shape[1]
        got = served.token_logprobs(r.input_ids, r.attention_mask, T)
        want = local.token_logprobs(r.input_ids, r.attention_mask, T)
        m = r.completion_mask.bool()
        assert not m.all()  # some rollouts are padded: padding must not shift the tokens
        assert torch.allclose(got[m], want[m], atol=1e-4) and (got[~m] == 0).all()
        sent = srv.requests
        again = served.token_logprobs(r.input_ids, r.attention_mask, T)
        assert srv.requests == sent and torch.equal(again, got)  # replayed from the cache
        assert served.usage["logprobs"].cache_hits == len(r.texts)
        with pytest.raises(teacher.TeacherError, match="temperature 1"):
            served.token_logprobs(r.input_ids, r.attention_mask, T, temperature=0.7)
    finally:
        srv.stop()


def test_served_teacher_with_another_tokenizer_is_refused(server):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    chars = [toy.BYTE_LEVEL.get(c, c) for c in toy.CHARS][::-1]  # the same characters, other ids
    other = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(
        vocab={c: i for i, c in enumerate(chars)}, merges=[])))
    with pytest.raises(teacher.TeacherError, match="does not share the student's tokenizer"):
        client("openai", server).check_tokenizer(other)


def test_completions_endpoint_refuses_what_it_does_not_serve(server):
    import openai
    c = openai.OpenAI(api_key="x", base_url=server.url + "/v1", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="only for token-id prompts"):
        c.completions.create(model="toy-teacher", prompt="1+2", max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="out of range"):
        c.completions.create(model="toy-teacher", prompt=[[3, 10**6]], max_tokens=1,
                             extra_body={"prompt_logprobs": 0})


# ---------------------------------------------------------------- judge options and the teacher index

def test_judge_temperatures_json_mode_and_reasoning_effort_reach_the_server(server):
    c = client("openai", server)
    judge = c.as_judge(64, temperatures={"rubricator": 0.7, "verifier": 0.0}, json_mode=True, reasoning_effort="high")
    p = toy.make_problems(1, seed=2)[0]
    chat = prompts.rubricator_messages(p.question, [p.solution], ["Answer: 1"])
    judge([chat], "rubricator", 0, tag=prompts.RUBRIC_SCHEMA)
    judge([chat], "verifier", 0, tag=prompts.VERDICT_SCHEMA)
    judge([chat], "tjudge", 0, tag=prompts.TJUDGE_SCHEMA)
    rub, ver, tj = server.bodies
    assert rub["temperature"] == 0.7 and ver["temperature"] == 0.0 and "temperature" not in tj
    # an OpenAI-compatible server gets json_object; reasoning models their effort
    assert rub["response_format"] == {"type": "json_object"} and rub["reasoning_effort"] == "high"


def test_openais_own_api_gets_the_strict_schema(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    t = teacher.load("openai:gpt-x", cache=None)
    fmt = t.judge_options(prompts.VERDICT_SCHEMA, None)["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"] == prompts.json_schema(prompts.VERDICT_SCHEMA)
    assert t.judge_options(None, None) == {}


def test_json_mode_is_refused_where_the_api_has_none(tiny_world):
    t = teacher.load(f"toy:{tiny_world.root}", cache=None)
    with pytest.raises(teacher.TeacherError, match="--judge-json-mode: the toy backend"):
        t.as_judge(64, json_mode=True)
    with pytest.raises(teacher.TeacherError, match="--judge-reasoning-effort: the anthropic backend"):
        teacher.load("anthropic:claude", cache=None).as_judge(64, reasoning_effort="high")


def test_two_servers_with_one_model_name_do_not_share_cache_entries(toy_teacher, tmp_path):
    """Regression: the cache key left the URL out, so a second server's answers were the first's."""
    other = serve.TeacherServer(toy_teacher, model_name="toy-teacher").start()
    first = serve.TeacherServer(toy_teacher, model_name="toy-teacher", faults=[{"reply": "from server A"}]).start()
    try:
        a = client("openai", first, tmp_path).complete([CHAT], max_tokens=8)[0][0]
        b = client("openai", other, tmp_path).complete([CHAT], max_tokens=8)[0][0]
    finally:
        first.stop()
        other.stop()
    assert a == "from server A" and b != a and other.requests == 1


def test_changed_reference_settings_are_an_error_not_a_second_bill(server, tmp_path):
    chats = [[{"role": "user", "content": q.question}] for q in toy.make_problems(2, seed=8)]
    c = client("openai", server, tmp_path)
    first = teacher.references(c, chats, k=2, temperature=1.0, max_tokens=24)
    assert server.requests == 2  # one request (n=2) per prompt
    assert teacher.references(c, chats, k=2, temperature=1.0, max_tokens=24) == first and server.requests == 2  # replayed
    with pytest.raises(teacher.TeacherError, match="holds references .* made with .*'temperature': 1.0.*--new-references"):
        teacher.references(c, chats, k=2, temperature=0.5, max_tokens=24)
    assert server.requests == 2  # nothing was paid
    teacher.references(c, chats, k=2, temperature=0.5, max_tokens=24, new_settings=True)
    assert server.requests == 4


def test_the_cache_key_holds_every_setting_that_changes_the_answer(server, tmp_path):
    """A cached answer is replayed only for the same chat, temperature, length, sample index and
    API options; any other setting asks again."""
    c = client("openai", server, tmp_path)
    c.complete([CHAT], n=1, temperature=1.0, max_tokens=24)
    asked = server.requests
    c.complete([CHAT], n=1, temperature=1.0, max_tokens=24)
    assert server.requests == asked  # replayed
    for kw in (dict(temperature=0.5), dict(max_tokens=12), dict(first_sample=1),
               dict(options={"response_format": {"type": "json_object"}})):
        before = server.requests
        c.complete([CHAT], n=1, **{"temperature": 1.0, "max_tokens": 24, **kw})
        assert server.requests == before + 1, kw
