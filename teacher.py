"""teacher.py - every text-producing backend behind one small interface (PAPER.md steps 2, 4, 5, 8).

    t = teacher.load("openai:gpt-4o-mini")        # or openai:MODEL@http://host:port/v1, anthropic:MODEL,
    texts = t.complete(chats, n=4, temperature=1.0)  # hf:PATH, toy, toy:WORLD_DIR
    -> one list of n texts per chat

What every backend gets for free (the class `Teacher`):
  * an on-disk sqlite cache keyed by (backend, model, messages, sampling parameters, sample index):
    a rerun, a resumed run or a second method over the same prompts pays for nothing twice. For
    references this is the official code's "teacher index" (generated once, replayed);
  * retries on timeouts, connection errors, 408/409/429/5xx: exponential backoff 1 s * 2^k with
    jitter, capped at 8 s, honouring Retry-After; 401/403/404 end the run with one clear line;
  * bounded concurrency (a thread pool), a requests-per-minute limit, a per-role circuit breaker;
  * usage accounting per role (calls, cache hits, retries, failures, input/output tokens).

LOPD needs the teacher's log-probs of the student's tokens: `token_logprobs` on a local model (hf:,
toy), or on a served one (openai:MODEL@URL) through vLLM's `prompt_logprobs` on /v1/completions.

`python teacher.py serve --teacher SPEC --port P` serves any backend on localhost through the real
OpenAI chat-completions and Anthropic messages wire formats (and, for a local model, vLLM's prompt
log-probs).

API keys are read from the environment only (OPENAI_API_KEY, ANTHROPIC_API_KEY) and never written to
logs, caches or error messages.
"""
from __future__ import annotations

import argparse
import contextlib
import email.utils
import functools
import hashlib
import json
import logging
import os
import random
import socket
import sqlite3
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import rubric

log = logging.getLogger("ropd.teacher")

JUDGE_MARKERS = (rubric.RUBRIC_SCHEMA, rubric.VERDICT_SCHEMA, rubric.TJUDGE_SCHEMA)


class TeacherError(RuntimeError):
    """A failure that retrying will not fix (bad spec, missing or rejected key, unknown model)."""


class CircuitOpenError(RuntimeError):
    """A role failed too often in a row: its requests fail fast for a while (counted, not fatal)."""


# ----------------------------------------------------------------------------------------------
# Cache, usage, rate limit
# ----------------------------------------------------------------------------------------------

def default_cache_path() -> Path:
    return Path(os.environ.get("ROPD_CACHE", Path.home() / ".cache" / "ropd")) / "teacher_cache.sqlite"


class Cache:
    """A persistent key -> (text, input tokens, output tokens) store in one sqlite file.

    Thread-safe; every write is committed at once, so nothing paid for is lost if the run dies.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS completions (key TEXT PRIMARY KEY, text TEXT, "
                         "input_tokens INTEGER, output_tokens INTEGER, created REAL)")
        self._db.commit()

    def get(self, key: str):
        with self._lock:
            row = self._db.execute("SELECT text, input_tokens, output_tokens FROM completions "
                                   "WHERE key = ?", (key,)).fetchone()
        return row

    def put(self, key: str, text: str, input_tokens: int, output_tokens: int):
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO completions VALUES (?, ?, ?, ?, ?)",
                             (key, text, input_tokens, output_tokens, time.time()))
            self._db.commit()

    def __len__(self):
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]


@dataclass
class RoleUsage:
    calls: int = 0          # requests actually sent (retries included)
    cache_hits: int = 0     # samples served from the cache
    samples: int = 0        # samples obtained from the backend
    retries: int = 0
    failures: int = 0       # requests that failed for good
    input_tokens: int = 0
    output_tokens: int = 0


class RateLimiter:
    """At most `rpm` requests in any sliding 60-second window (blocking, thread-safe)."""

    def __init__(self, rpm: float | None):
        self.rpm, self._times, self._lock = rpm, [], threading.Lock()

    def acquire(self):
        if not self.rpm:
            return
        while True:
            with self._lock:
                now = time.monotonic()
                self._times = [t for t in self._times if now - t < 60.0]
                if len(self._times) < self.rpm:
                    self._times.append(now)
                    return
                wait = 60.0 - (now - self._times[0])
            time.sleep(max(wait, 0.01))


# ----------------------------------------------------------------------------------------------
# Errors: which ones a retry can fix
# ----------------------------------------------------------------------------------------------

def _retry_after(exc) -> float | None:
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


def classify(exc: BaseException) -> str:
    """'retry' (transient), 'fatal' (stop the run: the key or model is wrong) or 'fail' (this request
    cannot succeed, e.g. a prompt too long; counted as a failure, the run goes on)."""
    status = getattr(exc, "status_code", None)
    if status is not None:
        if status in (408, 409, 429) or status >= 500:
            return "retry"
        return "fatal" if status in (401, 403, 404) else "fail"
    name = type(exc).__name__
    if isinstance(exc, (TimeoutError, ConnectionError)) or name in ("APITimeoutError", "APIConnectionError"):
        return "retry"
    return "fail"


def _redact(text: str) -> str:
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        key = os.environ.get(var)
        if key and len(key) > 4:
            text = text.replace(key, "***")
    return text


def describe(exc: BaseException) -> str:
    """One line, no secrets."""
    status = getattr(exc, "status_code", None)
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    prefix = f"HTTP {status}: " if status is not None else f"{type(exc).__name__}: "
    return _redact(prefix + msg)[:300]


# ----------------------------------------------------------------------------------------------
# The interface
# ----------------------------------------------------------------------------------------------

@dataclass
class Request:
    chat: list[dict]
    n: int
    temperature: float | None
    max_tokens: int
    keys: list[str] = field(default_factory=list)


class Teacher:
    """Base class: cache, retries, concurrency, rate limit, usage. Backends implement `_request`
    (one API call -> n texts) or, for local models, `_run` (a whole batch at once)."""

    kind = "base"
    supports_n = False  # can one request return several samples?

    def __init__(self, model: str, cache: Cache | str | Path | None = "default", concurrency: int = 8,
                 rpm: float | None = None, retries: int = 2, timeout: float = 120.0,
                 backoff_base: float = 1.0, backoff_cap: float = 8.0,
                 breaker_threshold: int = 8, breaker_cooldown: float = 30.0):
        self.model = model
        if cache == "default":
            cache = default_cache_path()
        self.cache = Cache(cache) if isinstance(cache, (str, Path)) else cache
        self.concurrency, self.retries, self.timeout = concurrency, retries, timeout
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.limiter = RateLimiter(rpm)
        self.usage: dict[str, RoleUsage] = {}
        self._lock = threading.Lock()
        self.breaker_threshold, self.breaker_cooldown = breaker_threshold, breaker_cooldown
        self._consecutive_failures: dict[str, int] = {}
        self._open_until: dict[str, float] = {}

    # -- what callers use ------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        """What identifies this teacher's outputs in the cache (not the URL: ports change)."""
        return f"{self.kind}:{self.model}"

    def complete(self, chats: list[list[dict]], n: int = 1, temperature: float | None = None,
                 max_tokens: int = 1024, role: str = "teacher", first_sample: int = 0,
                 return_exceptions: bool = False, valid=None) -> list[list]:
        """n texts for each chat (a list of {"role", "content"} messages).

        Sample j of a chat is cached under sample index first_sample + j, so asking again for the
        same samples is free and asking with a new `first_sample` (a retry after a bad judge
        output) gets fresh ones. With return_exceptions, a request that failed for good leaves its
        exception in place of the text; otherwise it is raised. Fatal errors always raise.
        `valid(chat_index, text) -> bool`, if given, keeps texts that fail it out of the cache (a
        judge output that does not parse), so that a rerun asks again instead of replaying it.
        """
        usage = self._usage(role)
        out = [[None] * n for _ in chats]
        pending: list[tuple[int, Request, list[int]]] = []
        for ci, chat in enumerate(chats):
            missing = []
            for j in range(n):
                key = self._key(chat, temperature, max_tokens, first_sample + j)
                text = self._cached(key, usage)
                if text is not None:
                    out[ci][j] = text
                else:
                    missing.append((j, key))
            if not missing:
                continue
            if self.supports_n:
                pending.append((ci, Request(chat, len(missing), temperature, max_tokens,
                                            [k for _, k in missing]), [j for j, _ in missing]))
            else:
                pending += [(ci, Request(chat, 1, temperature, max_tokens, [k]), [j])
                            for j, k in missing]
        if pending:
            results = self._run([r for _, r, _ in pending], role)
            for (ci, req, slots), res in zip(pending, results):
                if isinstance(res, BaseException):
                    if isinstance(res, TeacherError) or not return_exceptions:
                        self._fail(res)
                    for j in slots:
                        out[ci][j] = res
                    continue
                texts, tin, tout = res
                for j, key, text in zip(slots, req.keys, texts):
                    out[ci][j] = text
                    if self.cache is not None and (valid is None or valid(ci, text)):
                        self.cache.put(key, text, tin // len(texts), tout // len(texts))
        return out

    def usage_summary(self) -> dict:
        return {role: dict(vars(u)) for role, u in self.usage.items()}

    # -- internals ------------------------------------------------------------------------

    def _fail(self, exc: BaseException):
        """A request that failed for good, raised as the one error type callers handle."""
        raise exc if isinstance(exc, TeacherError) else TeacherError(f"{self.fingerprint}: {describe(exc)}")

    def _cached(self, key: str, usage: RoleUsage) -> str | None:
        """The text cached under `key` (counted as a cache hit), or None."""
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None:
            with self._lock:
                usage.cache_hits += 1
        return None if hit is None else hit[0]

    def _usage(self, role: str) -> RoleUsage:
        with self._lock:
            return self.usage.setdefault(role, RoleUsage())

    def _key(self, chat, temperature, max_tokens, index) -> str:
        blob = json.dumps([self.fingerprint, chat, temperature, max_tokens, index], sort_keys=True,
                          ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _run(self, requests: list[Request], role: str) -> list:
        """Send the requests with bounded concurrency; each gets its own retries."""
        return self._send_all([functools.partial(self._request, r.chat, r.n, r.temperature, r.max_tokens)
                               for r in requests], role)

    def _send_all(self, sends: list, role: str) -> list:
        """Run zero-argument API calls (each -> (results, input tokens, output tokens)) with bounded
        concurrency, each with its own retries; the results, or the exceptions, in order."""
        if len(sends) <= 1 or self.concurrency <= 1:
            return [self._with_retries(s, role) for s in sends]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(sends))) as pool:
            return list(pool.map(lambda s: self._with_retries(s, role), sends))

    def _with_retries(self, send, role: str):
        """One API call: retries with backoff; a TeacherError for fatal errors; else the exception."""
        usage = self._usage(role)
        for attempt in range(self.retries + 1):
            if time.monotonic() < self._open_until.get(role, 0.0):
                with self._lock:
                    usage.failures += 1
                return CircuitOpenError(f"{self.fingerprint}: circuit breaker open for role {role!r} after "
                                    f"{self.breaker_threshold} consecutive failures")
            self.limiter.acquire()
            with self._lock:
                usage.calls += 1
            try:
                texts, tin, tout = send()
            except TeacherError as e:
                return e
            except Exception as e:  # noqa: BLE001 - classified below
                kind = classify(e)
                if kind == "fatal":
                    return TeacherError(f"{self.fingerprint}: {describe(e)}")
                if kind == "retry" and attempt < self.retries:
                    wait = min(self.backoff_cap, self.backoff_base * 2 ** attempt) * random.uniform(0.5, 1.0)
                    after = _retry_after(e)
                    if after is not None:
                        wait = max(wait, min(after, 60.0))
                    log.warning("%s [%s] %s; retry %d/%d in %.1fs", self.fingerprint, role,
                                describe(e), attempt + 1, self.retries, wait)
                    with self._lock:
                        usage.retries += 1
                    time.sleep(wait)
                    continue
                log.warning("%s [%s] failed: %s", self.fingerprint, role, describe(e))
                with self._lock:
                    usage.failures += 1
                    self._consecutive_failures[role] = self._consecutive_failures.get(role, 0) + 1
                    if self._consecutive_failures[role] >= self.breaker_threshold:
                        self._open_until[role] = time.monotonic() + self.breaker_cooldown
                return e
            with self._lock:
                usage.samples += len(texts)
                usage.input_tokens += tin
                usage.output_tokens += tout
                self._consecutive_failures[role] = 0
            return texts, tin, tout
        raise AssertionError("unreachable")

    def _request(self, chat, n, temperature, max_tokens) -> tuple[list[str], int, int]:
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# API backends
# ----------------------------------------------------------------------------------------------

class OpenAITeacher(Teacher):
    """openai:MODEL - the OpenAI API, or any OpenAI-compatible server (vLLM, SGLang, Ollama) given a
    base URL (`openai:MODEL@http://host:port/v1` or $OPENAI_BASE_URL)."""

    kind = "openai"
    supports_n = True

    def __init__(self, model: str, base_url: str | None = None, **kw):
        super().__init__(model, **kw)
        import openai

        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        key = os.environ.get("OPENAI_API_KEY")
        if not key:
            if not self.base_url:
                raise TeacherError("OPENAI_API_KEY is not set (export it, or give a local server: "
                                   "openai:MODEL@http://127.0.0.1:8000/v1)")
            key = "EMPTY"  # local servers usually ignore the key
        # our own retry policy replaces the SDK's (so retries are counted and bounded)
        self.client = openai.OpenAI(api_key=key, base_url=self.base_url, timeout=self.timeout,
                                    max_retries=0)

    def _request(self, chat, n, temperature, max_tokens):
        kwargs = dict(model=self.model, messages=chat, n=n, max_completion_tokens=max_tokens)
        if temperature is not None:
            kwargs["temperature"] = temperature
        resp = self.client.chat.completions.create(**kwargs)
        texts = [c.message.content or "" for c in sorted(resp.choices, key=lambda c: c.index)]
        u = resp.usage
        return texts, (u.prompt_tokens if u else 0), (u.completion_tokens if u else 0)

    # -- LOPD with a served teacher: vLLM's prompt log-probs --------------------------------

    def token_logprobs(self, input_ids, attention_mask, n_completion: int, temperature: float = 1.0):
        """LOPD: the served teacher's log-probs of the student's own completion tokens, [N, T] (0 on
        padding), the same contract as HFTeacher.token_logprobs. Each row's unpadded ids go to the
        server as a prompt; the server must share the student's tokenizer (check_tokenizer)."""
        import torch

        if temperature != 1.0:
            raise TeacherError(f"a served teacher's prompt log-probs are at temperature 1, not {temperature}: "
                               "sample the student at --temperature 1 for LOPD")
        seqs = [row[m.bool()].tolist() for row, m in zip(input_ids, attention_mask)]
        out = torch.zeros(len(seqs), n_completion)
        for i, lp in enumerate(self.sequence_logprobs(seqs)):
            c = int(attention_mask[i, -n_completion:].sum())  # completions are right-padded
            if c:
                out[i, :c] = torch.tensor(lp[-c:])
        return out

    def sequence_logprobs(self, seqs: list[list[int]], batch: int = 16, role: str = "logprobs") -> list[list[float]]:
        """log p(ids[t] | ids[:t]) for t >= 1 of each token-id sequence under the served model, cached
        per sequence: `batch` sequences per /v1/completions call (see _prompt_logprobs)."""
        usage = self._usage(role)
        keys = [hashlib.sha256(json.dumps([self.fingerprint, "prompt_logprobs", s]).encode()).hexdigest()
                for s in seqs]
        out: list = [None] * len(seqs)
        todo = []
        for i, key in enumerate(keys):
            hit = self._cached(key, usage)
            if hit is not None:
                out[i] = json.loads(hit)
            else:
                todo.append(i)
        chunks = [todo[s:s + batch] for s in range(0, len(todo), batch)]
        sends = [functools.partial(self._prompt_logprobs, [seqs[i] for i in c]) for c in chunks]
        for chunk, res in zip(chunks, self._send_all(sends, role)):
            if isinstance(res, BaseException):
                self._fail(res)
            for i, (lp, _) in zip(chunk, res[0]):
                out[i] = lp
                if self.cache is not None:
                    self.cache.put(keys[i], json.dumps(lp), len(seqs[i]), 0)
        return out

    def check_tokenizer(self, tokenizer, text: str = "Answer: 12 + 34 = 46.\nThe quick brown fox (x/y)!") -> None:
        """LOPD sends the student's token ids: the served model must read them as the same tokens.
        The server's decoded token for each id of a probe must be the student tokenizer's."""
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        res = self._with_retries(functools.partial(self._prompt_logprobs, [ids]), "logprobs")
        if isinstance(res, BaseException):
            self._fail(res)
        served = res[0][0][1]
        ours = [tokenizer.decode([i]) for i in ids[1:]]
        if any(d is not None and d != o for d, o in zip(served, ours)):
            raise TeacherError(f"{self.fingerprint} does not share the student's tokenizer (the server "
                               f"reads {served[:8]} where the student wrote {ours[:8]})")

    def _prompt_logprobs(self, seqs: list[list[int]]):
        """One /v1/completions call with token-id prompts, max_tokens=1 and vLLM's prompt_logprobs=0
        (the log-prob of each prompt token itself, from the raw logits, i.e. temperature 1)."""
        resp = self.client.completions.create(model=self.model, prompt=seqs, max_tokens=1, temperature=0.0,
                                              extra_body={"prompt_logprobs": 0})
        choices = sorted(resp.choices, key=lambda c: c.index)
        if len(choices) != len(seqs):
            raise TeacherError(f"{self.fingerprint}: {len(seqs)} prompts, {len(choices)} choices")
        out = [parse_prompt_logprobs(getattr(c, "prompt_logprobs", None), ids) for c, ids in zip(choices, seqs)]
        u = resp.usage
        return out, (u.prompt_tokens if u else 0), (u.completion_tokens if u else 0)


def parse_prompt_logprobs(entries, ids: list[int]) -> tuple[list[float], list[str | None]]:
    """vLLM's `prompt_logprobs` for the prompt `ids` -> (log p(ids[t] | ids[:t]) for t >= 1, the
    server's decoded tokens). Entry t is None for t = 0, else {"<token id>": {"logprob", "rank",
    "decoded_token"}, ...} (the prompt token itself plus any top-k)."""
    if not isinstance(entries, list) or len(entries) != len(ids):
        raise TeacherError("the server returned no prompt log-probs: LOPD with a served teacher needs an "
                           "OpenAI-compatible /v1/completions with vLLM's prompt_logprobs")
    logprobs, decoded = [], []
    for t, (tid, entry) in enumerate(zip(ids[1:], entries[1:]), 1):
        d = entry.get(str(tid)) if isinstance(entry, dict) else None
        if not isinstance(d, dict) or "logprob" not in d:
            raise TeacherError(f"prompt log-probs: no entry for token {tid} at position {t}")
        logprobs.append(float(d["logprob"]))
        decoded.append(d.get("decoded_token"))
    return logprobs, decoded


class AnthropicTeacher(Teacher):
    """anthropic:MODEL - the Anthropic messages API ($ANTHROPIC_BASE_URL for another host).
    One sample per request (the API has no `n`); temperature is not sent (see `_request`)."""

    kind = "anthropic"

    def __init__(self, model: str, base_url: str | None = None, **kw):
        super().__init__(model, **kw)
        import anthropic

        key = os.environ.get("ANTHROPIC_API_KEY")
        if not key:
            raise TeacherError("ANTHROPIC_API_KEY is not set")
        self.client = anthropic.Anthropic(api_key=key, base_url=base_url or os.environ.get("ANTHROPIC_BASE_URL"),
                                          timeout=self.timeout, max_retries=0)

    def _request(self, chat, n, temperature, max_tokens):
        system = "\n\n".join(m["content"] for m in chat if m["role"] == "system")
        messages = [m for m in chat if m["role"] != "system"]
        kwargs = dict(model=self.model, messages=messages, max_tokens=max_tokens)
        if system:
            kwargs["system"] = system
        # no temperature: API version 2026-10-21 (SDK 2.x) rejects every sampling parameter, so
        # the model's default sampling is what a Claude teacher gets
        resp = self.client.messages.create(**kwargs)
        text = "".join(getattr(b, "text", "") for b in resp.content)
        return [text], resp.usage.input_tokens, resp.usage.output_tokens


# ----------------------------------------------------------------------------------------------
# Local backends
# ----------------------------------------------------------------------------------------------

class HFTeacher(Teacher):
    """hf:PATH - a local transformers causal LM: generation, and token log-probs for LOPD."""

    kind = "hf"

    def __init__(self, path: str, batch_size: int = 64, device: str | None = None, **kw):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        super().__init__(str(path), **kw)
        if not Path(path).exists():
            raise TeacherError(f"hf: no model at {path!r}")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.device).eval()
        self.batch_size = batch_size
        weights = sorted(Path(path).glob("*.safetensors")) or sorted(Path(path).glob("*.bin"))
        stamp = [(w.name, w.stat().st_size, int(w.stat().st_mtime)) for w in weights]
        self._fp = hashlib.sha1(json.dumps([str(Path(path).resolve()), stamp]).encode()).hexdigest()[:12]

    @property
    def fingerprint(self) -> str:
        return f"hf:{Path(self.model).name}:{self._fp}"

    def _run(self, requests, role):
        """All requests in a few batched `generate` calls (a local model gains nothing from threads)."""
        import grpo

        usage = self._usage(role)
        # one batch never mixes temperatures: sort the samples by it
        flat = sorted(((ri, r) for ri, r in enumerate(requests) for _ in range(r.n)),
                      key=lambda x: -1.0 if x[1].temperature is None else x[1].temperature)
        texts: list[list[str]] = [[] for _ in requests]
        tokens = [[0, 0] for _ in requests]
        s = 0
        while s < len(flat):
            temp = flat[s][1].temperature
            chunk = [x for x in flat[s:s + self.batch_size] if x[1].temperature == temp]
            s += len(chunk)
            seed = int(chunk[0][1].keys[0][:8], 16)  # reproducible, even before the cache has it
            ro = grpo.sample(self.hf_model, self.tokenizer, [r.chat for _, r in chunk], n=1,
                             max_new_tokens=max(r.max_tokens for _, r in chunk),
                             temperature=1.0 if temp is None else temp, seed=seed)
            for k, (ri, r) in enumerate(chunk):
                texts[ri].append(ro.texts[k])
                tokens[ri][0] += int(ro.prompt_mask[k].sum())
                tokens[ri][1] += int(ro.completion_mask[k].sum())
        with self._lock:
            usage.calls += len(requests)
            usage.samples += len(flat)
            usage.input_tokens += sum(t[0] for t in tokens)
            usage.output_tokens += sum(t[1] for t in tokens)
        return [(t, a, b) for t, (a, b) in zip(texts, tokens)]

    def check_tokenizer(self, tokenizer) -> None:
        """LOPD scores the student's token ids: the teacher must share the student's tokenizer."""
        if self.tokenizer.get_vocab() != tokenizer.get_vocab():
            raise TeacherError(f"{self.fingerprint} does not share the student's tokenizer")

    def token_logprobs(self, input_ids, attention_mask, n_completion: int, temperature: float = 1.0):
        """LOPD: the teacher's log-probs of the student's own token ids (same tokenizer required)."""
        import torch

        import grpo

        with torch.no_grad():
            return grpo.token_logprobs(self.hf_model, input_ids.to(self.device),
                                       attention_mask.to(self.device), n_completion,
                                       temperature).float().cpu()


class ToyTeacher(HFTeacher):
    """toy or toy:WORLD_DIR - the toy world's teacher model, and the deterministic toy judge for
    rubricator / verifier / T-Judge prompts (recognised by their schema tags)."""

    kind = "toy"

    def __init__(self, root: str | None = None, **kw):
        import toy

        world = toy.build(root=root) if root else toy.build()
        self.world = world
        super().__init__(str(world.teacher_path), **kw)

    def _run(self, requests, role):
        import toy

        out: list = [None] * len(requests)
        model_reqs = []
        usage = self._usage(role)
        for i, r in enumerate(requests):
            system = " ".join(m["content"] for m in r.chat if m["role"] == "system")
            if any(tag in system for tag in JUDGE_MARKERS):
                text = toy.toy_judge(r.chat)
                tin = sum(len(m["content"]) for m in r.chat)  # one token per character
                out[i] = ([text] * r.n, tin * r.n, len(text) * r.n)
                with self._lock:
                    usage.calls += 1
                    usage.samples += r.n
                    usage.input_tokens += tin * r.n
                    usage.output_tokens += len(text) * r.n
            else:
                model_reqs.append(i)
        if model_reqs:
            for i, res in zip(model_reqs, super()._run([requests[i] for i in model_reqs], role)):
                out[i] = res
        return out


# ----------------------------------------------------------------------------------------------
# Specs
# ----------------------------------------------------------------------------------------------

SPEC_HELP = "openai:MODEL, openai:MODEL@URL, anthropic:MODEL, hf:PATH, toy, toy:WORLD_DIR"


def load(spec: str, **kw) -> Teacher:
    """teacher.load(spec): openai:MODEL[@URL] | anthropic:MODEL[@URL] | hf:PATH | toy[:WORLD_DIR].

    Keyword arguments go to the Teacher (cache, concurrency, rpm, retries, timeout, ...).
    """
    kind, _, rest = spec.partition(":")
    if kind not in ("toy", "hf", "openai", "anthropic"):
        raise TeacherError(f"unknown teacher spec {spec!r}; expected one of: {SPEC_HELP}")
    if kind == "toy":
        return ToyTeacher(rest or None, **kw)
    if not rest:
        raise TeacherError(f"teacher spec {spec!r} names no model; expected one of: {SPEC_HELP}")
    if kind in ("openai", "anthropic"):
        model, _, url = rest.partition("@")
        cls = OpenAITeacher if kind == "openai" else AnthropicTeacher
        return cls(model, base_url=url or None, **kw)
    return HFTeacher(rest, **kw)


# ----------------------------------------------------------------------------------------------
# A tiny OpenAI- and Anthropic-compatible server over any backend
# ----------------------------------------------------------------------------------------------

def _text_of(content) -> str:
    """Message content as plain text (a string, or a list of {"type": "text", "text": ...} blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


class _Handler(BaseHTTPRequestHandler):
    server: "TeacherServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet; requests are counted instead
        log.debug("serve: " + fmt, *args)

    def _send(self, status: int, body: dict, headers: dict | None = None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, anthropic_style: bool, headers=None):
        if anthropic_style:
            kind = {429: "rate_limit_error", 400: "invalid_request_error", 404: "not_found_error"}.get(
                status, "api_error")
            self._send(status, {"type": "error", "error": {"type": kind, "message": message}}, headers)
        else:
            self._send(status, {"error": {"message": message, "type": "server_error", "code": status}},
                       headers)

    def do_GET(self):
        if self.path.rstrip("/").endswith("/models"):
            self._send(200, {"object": "list", "data": [
                {"id": self.server.model_name, "object": "model", "owned_by": "ropd"}]})
        else:
            self._error(404, f"no route {self.path}", False)

    def do_POST(self):
        anthropic_style = self.path.rstrip("/").endswith("/messages")
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            return self._error(400, "request body is not JSON", anthropic_style)
        self.server.count()
        fault = self.server.next_fault()
        if fault:
            time.sleep(fault.get("delay", 0.0))
            if "reply" in fault:  # a well-formed response whose text is the given (bad) output
                return self._reply(fault["reply"], body, anthropic_style)
            if fault.get("status"):
                hdr = {"Retry-After": fault["retry_after"]} if "retry_after" in fault else None
                return self._error(fault["status"], f"injected fault {fault['status']}",
                                   anthropic_style, hdr)
        if body.get("stream"):
            return self._error(400, "streaming is not supported", anthropic_style)
        try:
            if anthropic_style:
                self._anthropic(body)
            elif self.path.rstrip("/").endswith("/chat/completions"):
                self._openai(body)
            elif self.path.rstrip("/").endswith("/completions"):
                self._completions(body)
            else:
                self._error(404, f"no route {self.path}", False)
        except TeacherError as e:
            self._error(500, str(e), anthropic_style)

    def _reply(self, text, body, anthropic_style):
        if anthropic_style:
            self._send(200, {"id": "msg_fault", "type": "message", "role": "assistant",
                             "model": body.get("model", ""), "content": [{"type": "text", "text": text}],
                             "stop_reason": "end_turn", "stop_sequence": None,
                             "usage": {"input_tokens": 0, "output_tokens": 0}})
        else:
            self._send(200, {"id": "chatcmpl-fault", "object": "chat.completion", "created": 0,
                             "model": body.get("model", ""), "usage": {"prompt_tokens": 0,
                             "completion_tokens": 0, "total_tokens": 0},
                             "choices": [{"index": i, "message": {"role": "assistant", "content": text},
                                          "finish_reason": "stop"} for i in range(int(body.get("n") or 1))]})

    def _openai(self, body):
        chat = [{"role": m["role"], "content": _text_of(m.get("content"))} for m in body.get("messages", [])]
        n = int(body.get("n") or 1)
        max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 1024)
        texts = self.server.complete([chat], n=n, temperature=body.get("temperature"),
                                     max_tokens=max_tokens)[0]
        tin, tout = self.server.token_counts(chat, texts)
        self._send(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
            "created": int(time.time()), "model": body.get("model", self.server.model_name),
            "choices": [{"index": i, "message": {"role": "assistant", "content": t},
                         "finish_reason": "stop", "logprobs": None} for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": tin, "completion_tokens": tout, "total_tokens": tin + tout}})

    def _completions(self, body):
        """/v1/completions for scoring only: token-id prompts with vLLM's `prompt_logprobs`, the call
        that LOPD makes to a served teacher (OpenAITeacher.sequence_logprobs). Nothing is generated."""
        prompts = body.get("prompt")
        if isinstance(prompts, list) and prompts and isinstance(prompts[0], int):
            prompts = [prompts]
        ok = isinstance(prompts, list) and prompts and all(
            isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in prompts)
        if body.get("prompt_logprobs") is None or not ok:
            return self._error(400, "this server answers /v1/completions only for token-id prompts with "
                                    "prompt_logprobs", False)
        if not isinstance(self.server.teacher, HFTeacher):
            return self._error(400, "prompt log-probs need a local model (hf:PATH or toy)", False)
        vocab = self.server.teacher.hf_model.config.vocab_size
        if any(not 0 <= t < vocab for p in prompts for t in p):
            return self._error(400, f"token id out of range [0, {vocab})", False)
        rows = self.server.prompt_logprobs(prompts)
        n = sum(len(p) for p in prompts)
        self._send(200, {
            "id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
            "model": body.get("model", self.server.model_name),
            "choices": [{"index": i, "text": "", "logprobs": None, "finish_reason": "length",
                         "prompt_logprobs": r} for i, r in enumerate(rows)],
            "usage": {"prompt_tokens": n, "completion_tokens": 0, "total_tokens": n}})

    def _anthropic(self, body):
        system = _text_of(body.get("system") or "")
        chat = ([{"role": "system", "content": system}] if system else []) + \
               [{"role": m["role"], "content": _text_of(m.get("content"))} for m in body.get("messages", [])]
        text = self.server.complete([chat], n=1, temperature=body.get("temperature"),
                                    max_tokens=int(body.get("max_tokens") or 1024))[0][0]
        tin, tout = self.server.token_counts(chat, [text])
        self._send(200, {
            "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
            "model": body.get("model", self.server.model_name),
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": {"input_tokens": tin, "output_tokens": tout}})


class TeacherServer(ThreadingHTTPServer):
    """Serves `teacher` on (host, port). `faults` is a list of injected responses consumed one per
    request - {"status": 429, "retry_after": 0}, {"delay": 2.0}, {"reply": "not JSON"}, or None for
    a normal answer - used by the tests to drive the real SDKs through rate limits, server errors,
    timeouts and bad judge outputs."""

    daemon_threads = True

    def __init__(self, teacher: Teacher, host: str = "127.0.0.1", port: int = 0, model_name: str | None = None,
                 faults: list[dict] | None = None):
        super().__init__((host, port), _Handler)
        self.teacher = teacher
        self.model_name = model_name or teacher.model
        self.faults = list(faults or [])
        self.requests = 0
        self._lock = threading.Lock()
        # a local model is not thread-safe: its requests are served one at a time
        self._serial = threading.Lock() if isinstance(teacher, HFTeacher) else contextlib.nullcontext()
        self._open: dict = {}  # connection socket -> its handler thread

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}"

    def complete(self, chats, **kw):
        with self._serial:
            return self.teacher.complete(chats, role="serve", **kw)

    def prompt_logprobs(self, prompts: list[list[int]]) -> list[list]:
        """vLLM's prompt_logprobs=0 format: per prompt, None then one {"<id>": {"logprob", "rank",
        "decoded_token"}} per following token, from the teacher model's raw (temperature 1) logits."""
        import torch

        model, tok = self.teacher.hf_model, self.teacher.tokenizer
        out = []
        with self._serial, torch.no_grad():
            for ids in prompts:
                x = torch.tensor([ids], device=model.device)
                logp = model(input_ids=x).logits[0, :-1].float().log_softmax(-1)
                chosen = logp.gather(1, x[0, 1:, None])[:, 0]
                rank = (logp > chosen[:, None]).sum(1) + 1
                out.append([None] + [{str(t): {"logprob": lp, "rank": r, "decoded_token": tok.decode([t])}}
                                     for t, lp, r in zip(ids[1:], chosen.tolist(), rank.tolist())])
        return out

    def count(self):
        with self._lock:
            self.requests += 1

    def next_fault(self):
        with self._lock:
            return self.faults.pop(0) if self.faults else None

    def token_counts(self, chat, texts):
        tok = getattr(self.teacher, "tokenizer", None)
        count = (lambda s: len(tok(s, add_special_tokens=False)["input_ids"])) if tok else (lambda s: len(s.split()))
        return sum(count(m["content"]) for m in chat), sum(count(t) for t in texts)

    def start(self) -> "TeacherServer":
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def stop(self):
        """Stop a started server: no new requests, and no handler thread left behind (see server_close)."""
        self.shutdown()
        self.server_close()

    # One daemon thread per connection, as ThreadingMixIn does, but tracked: a keep-alive connection's
    # thread would otherwise wait in recv() for ever, holding the server and thus the teacher model.
    # Left to die with the interpreter, such a thread frees the model's tensors during finalization,
    # and torch, re-taking the GIL from a thread Python is tearing down, aborts the process
    # ("terminate called without an active exception", exit code 134, after every test passed).
    def process_request(self, request, client_address):
        t = threading.Thread(target=self.process_request_thread, args=(request, client_address), daemon=True)
        with self._lock:
            self._open[request] = t
        t.start()

    def shutdown_request(self, request):
        with self._lock:
            self._open.pop(request, None)
        super().shutdown_request(request)

    def server_close(self):
        """Close the listening socket, end every open connection, and wait for their threads."""
        super().server_close()
        with self._lock:
            open_ = list(self._open.items())
        for sock, _ in open_:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a handler waiting for the next request
        for _, t in open_:
            t.join(timeout=30)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Serve a teacher over the OpenAI and Anthropic wire formats.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="serve a teacher on localhost")
    s.add_argument("--teacher", default="toy", help=f"teacher spec ({SPEC_HELP})")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--model-name", default=None, help="the model name clients use (default: the spec's)")
    s.add_argument("--cache", default=None, help="sqlite cache for the served teacher (default: none)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        t = load(args.teacher, cache=args.cache)
    except TeacherError as e:
        sys.exit(f"error: {e}")
    server = TeacherServer(t, args.host, args.port, args.model_name)
    print(f"serving {t.fingerprint} as {server.model_name!r} at {server.url}/v1 "
          f"(OpenAI: /v1/chat/completions, /v1/completions with prompt_logprobs; Anthropic: /v1/messages)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
