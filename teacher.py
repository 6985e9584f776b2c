"""teacher.py - what the teacher gives: texts (references, judge outputs) and, if white-box, log-probs.

    t = teacher.load("openai:gpt-4o-mini")           # or openai:MODEL@http://host:port/v1,
    texts = t.complete(chats, n=4, temperature=1.0)  # anthropic:MODEL, hf:PATH, toy, toy:WORLD_DIR
    -> one list of n texts per chat
    refs = teacher.references(t, chats, k=4, ...)    # Eq. 1: K references per prompt, paid once
    judge = t.as_judge(max_tokens)                   # the `complete` that rubric.py's judges call

The interface is `Teacher.complete` (every backend) and `token_logprobs` (white-box backends, for
LOPD: a local model, hf: or toy, or one served by vLLM, through its `prompt_logprobs`). The
backends follow it; the transport plumbing that every backend shares (an on-disk cache, retries,
concurrency, rate limits, a circuit breaker, usage accounting) is in the last section:
  * the sqlite cache is keyed by (backend, model, messages, sampling parameters, sample index): a
    rerun, a resumed run or a second method over the same prompts pays for nothing twice. For
    references this is the official code's "teacher index" (generated once, replayed);
  * retries on timeouts, connection errors, 408/409/429/5xx: exponential backoff 1 s * 2^k with
    jitter, capped at 8 s, honouring Retry-After; 401/403/404 end the run with one clear line.

serve.py serves any backend on localhost over the OpenAI and Anthropic wire formats.
API keys are read from the environment only (OPENAI_API_KEY, ANTHROPIC_API_KEY) and never written to
logs, caches or error messages.
"""
from __future__ import annotations

import collections
import contextlib
import email.utils
import functools
import hashlib
import itertools
import json
import logging
import math
import os
import random
import re
import sqlite3
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import torch

import grpo
import prompts
import rubric
import toy

log = logging.getLogger("ropd.teacher")
DEFAULT_MAX_REPLY_BYTES = 64 << 20  # 64 MiB: a reply of 8 samples of 8k tokens is well under 1 MiB



class TeacherError(RuntimeError):
    """A failure that retrying will not fix (bad spec, missing or rejected key, unknown model)."""


class CircuitOpenError(RuntimeError):
    """A role's circuit breaker is open: its requests fail fast for a while (counted, not fatal)."""


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
    options: dict = field(default_factory=dict)  # extra API fields: response_format, reasoning_effort


class Teacher:
    """The interface every backend shares: `complete` (texts), and for white-box teachers
    `token_logprobs` (LOPD). Backends implement `_request` (one API call -> n texts) or, for local
    models, `_run` (a whole batch at once); the cache lookups are here, and the transport
    (retries, concurrency, rate limit, circuit breaker, usage) is a `Transport` (end of file)."""

    kind = "base"
    supports_n = False        # can one request return several samples?
    supports_options = False  # does the API take response_format / reasoning_effort?

    def __init__(self, model: str, *, cache: Cache | str | Path | None = "default", concurrency: int = 8,
                 rpm: float | None = None, retries: int = 2, timeout: float = 120.0,
                 backoff_base: float = 1.0, backoff_cap: float = 8.0,
                 breaker: BreakerConfig | None = None, timeouts: dict | None = None,
                 max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES):
        self.model = model
        self.cache = open_cache(cache)
        self.timeout = timeout                # seconds per request (a served backend's whole request, connect
        #                                       to last byte), for a role `timeouts` does not name
        self.timeouts = dict(timeouts or {})  # role -> seconds (the official code: one per stage)
        self.max_reply_bytes = max_reply_bytes
        self.transport = Transport(lambda: self.fingerprint, concurrency=concurrency, rpm=rpm, retries=retries,
                                   backoff_base=backoff_base, backoff_cap=backoff_cap, breaker=breaker)

    @property
    def fingerprint(self) -> str:
        """What identifies this teacher's outputs in the cache (not the URL: ports change)."""
        return f"{self.kind}:{self.model}"

    def complete(self, chats: list[list[dict]], *, n: int = 1, temperature: float | None = None,
                 max_tokens: int = 1024, role: str = "teacher", first_sample: int = 0,
                 return_exceptions: bool = False, valid=None, options: dict | None = None,
                 reuse_later: int = 0) -> list[list]:
        """n texts for each chat (a list of {"role", "content"} messages).

        Sample j of a chat is cached under sample index first_sample + j, so asking again for the
        same samples is free and asking with a new `first_sample` (a retry after a bad judge
        output) gets fresh ones. With return_exceptions, a request that failed for good leaves its
        exception in place of the text; otherwise it is raised. Fatal errors always raise.
        `valid(chat_index, text) -> bool`, if given, keeps texts that fail it out of the cache (a
        judge output that does not parse), so that a rerun asks again instead of replaying it.
        `options` are extra API fields (structured output, reasoning effort; see judge_options).
        `reuse_later`: a sample cached under one of the next `reuse_later` indices serves too (a
        judge's re-ask that a previous run paid for, when the first answer was not worth keeping).
        """
        options = options or {}
        out = [[None] * n for _ in chats]
        pending = self._missing(chats, n, temperature, max_tokens, options, role=role, first_sample=first_sample,
                                reuse_later=reuse_later, out=out)
        for _ in range(2):  # a second round only for the samples a server that ignores `n` left out
            if pending:
                pending = self._ask(pending, role, out, valid=valid, return_exceptions=return_exceptions)
        for ci, req, slots in pending:
            err = RequestError(f"{self.fingerprint}: {len(slots)} samples were asked for one by one and did not come")
            if not return_exceptions:
                self._fail(err)
            for j in slots:
                out[ci][j] = err
        return out

    def _missing(self, chats, n, temperature, max_tokens, options, *, role, first_sample, reuse_later, out) -> list:
        """Fill `out` from the cache; the requests for what it lacks, as (chat index, Request, slots)."""
        pending: list[tuple[int, Request, list[int]]] = []
        for ci, chat in enumerate(chats):
            missing = []
            for j in range(n):
                key = self._key(chat, temperature, max_tokens, first_sample + j, options)
                later = (self._key(chat, temperature, max_tokens, first_sample + j + d, options)
                         for d in range(1, reuse_later + 1))
                text = next((t for k in itertools.chain([key], later) if (t := self._cached(k, role)) is not None), None)
                if text is not None:
                    out[ci][j] = text
                else:
                    missing.append((j, key))
            if missing:
                pending += self._requests(ci, chat, missing, temperature=temperature, max_tokens=max_tokens,
                                          options=options)
        return pending

    def _requests(self, ci, chat, missing, *, temperature, max_tokens, options) -> list:
        """One request for all of a chat's missing samples where the API returns n, else one each."""
        return [(ci, Request(chat=chat, n=len(part), temperature=temperature, max_tokens=max_tokens,
                             keys=[k for _, k in part], options=options),
                 [j for j, _ in part]) for part in ([missing] if self.supports_n else [[m] for m in missing])]

    def _ask(self, pending: list, role: str, out: list, *, valid, return_exceptions: bool) -> list:
        """Send the pending requests. Each answer is cached the moment it arrives (a run killed or
        interrupted mid-batch keeps every answer that came back), then the failures are raised or
        put in place. Returns the requests for samples a server left out (it ignored `n`)."""
        stored: set[int] = set()

        def store(i: int, res) -> None:
            stored.add(i)
            if isinstance(res, BaseException):
                return
            ci, req, slots = pending[i]
            texts, tin, tout = res
            for j, key, text in zip(slots, req.keys, texts):
                out[ci][j] = text = clean_reply(text)
                if self.cache is not None and (valid is None or valid(ci, text)):
                    self.cache.put(key, text, tin // len(texts), tout // len(texts))

        results = self._run([r for _, r, _ in pending], role, on_result=store)
        short = []
        for i, ((ci, req, slots), res) in enumerate(zip(pending, results)):
            if i not in stored:  # a backend that answers a whole batch at once (a local model)
                store(i, res)
            if isinstance(res, BaseException):
                if isinstance(res, TeacherError) or not return_exceptions:
                    self._fail(res)
                for j in slots:
                    out[ci][j] = res
            elif len(res[0]) < len(slots):
                short += self._samples_left_out(ci, req, slots, len(res[0]))
        return short

    def _samples_left_out(self, ci: int, req: Request, slots: list[int], got: int) -> list:
        """A server that ignores `n` sends one sample where n were asked for: say so once, and ask
        for the rest one request each from now on."""
        if self.supports_n:
            log.warning("%s sent %d of the %d samples asked for in one request (it ignores `n`); asking for "
                        "the rest one request each", self.fingerprint, got, len(slots))
            self.supports_n = False
        missing = list(zip(slots, req.keys))[got:]
        return self._requests(ci, req.chat, missing, temperature=req.temperature, max_tokens=req.max_tokens,
                              options=req.options)

    def as_judge(self, max_tokens: int | dict, *, temperatures: dict | None = None, json_mode: bool = False,
                 reasoning_effort: str | None = None, retries: int = 2) -> rubric.CompleteFn:
        """This backend as the `complete(chats, stage, attempt, valid, tag)` that rubric.py's judges
        call: one sample per chat at the stage's temperature (`temperatures`: stage -> value; a
        missing one is not sent) and length limit (`max_tokens`: one for every stage, or stage ->
        limit with "default" for the others: the official code gives the rubricator 8,192 and the
        verifier 4,096), the stage as the usage role; a re-ask (attempt > 0) is a fresh
        sample, not the cached one, and an output that does not parse is not cached (a rerun asks
        again, but first takes a re-ask already paid for: up to `retries` later samples). With
        `json_mode` the API is asked for the output's JSON schema (judge_options)."""
        self.check_judge_options(json_mode, reasoning_effort)

        def complete(chats, stage, attempt, valid=None, tag=None):
            options = self.judge_options(tag if json_mode else None, reasoning_effort)
            limit = max_tokens.get(stage, max_tokens["default"]) if isinstance(max_tokens, dict) else max_tokens
            out = self.complete(chats, n=1, temperature=(temperatures or {}).get(stage), max_tokens=limit,
                                role=stage, first_sample=attempt, return_exceptions=True, valid=valid,
                                options=options, reuse_later=max(0, retries - attempt))
            return [o[0] for o in out]
        return complete

    def check_judge_options(self, json_mode: bool, reasoning_effort: str | None):
        """Structured output and reasoning effort are API fields: refuse them where there is none."""
        if (json_mode or reasoning_effort) and not self.supports_options:
            flag = "--judge-json-mode" if json_mode else "--judge-reasoning-effort"
            raise TeacherError(f"{flag}: the {self.kind} backend ({self.fingerprint}) takes no such option; "
                               f"leave it off (it is for OpenAI and OpenAI-compatible servers)")

    def judge_options(self, tag: str | None, reasoning_effort: str | None) -> dict:
        return {}

    @property
    def usage(self) -> dict[str, RoleUsage]:
        return self.transport.usage

    def usage_summary(self) -> dict:
        return {role: dict(vars(u)) for role, u in self.usage.items()}

    def _fail(self, exc: BaseException):
        """A request that failed for good, raised as the one error type callers handle."""
        raise exc if isinstance(exc, TeacherError) else TeacherError(f"{self.fingerprint}: {describe(exc)}")

    def _cached(self, key: str, role: str) -> str | None:
        """The text cached under `key` (counted as a cache hit), or None."""
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None:
            self.transport.count(role, cache_hits=1)
        return None if hit is None else hit[0]

    def _key(self, chat, temperature, max_tokens, index, options=None) -> str:
        fields = [self.fingerprint, chat, temperature, max_tokens, index] + ([options] if options else [])
        blob = json.dumps(fields, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _run(self, requests: list[Request], role: str, on_result=None) -> list:
        """Send the requests with bounded concurrency; each gets its own retries, the role's timeout,
        and `on_result(index, result)` as soon as it is answered."""
        timeout = self.timeouts.get(role, self.timeout)
        return self.transport.send_all([functools.partial(self._request, r.chat, n=r.n, temperature=r.temperature,
                                                          max_tokens=r.max_tokens, options=r.options, timeout=timeout)
                                        for r in requests], role, on_result=on_result)

    def _request(self, chat, *, n, temperature, max_tokens, options, timeout: float | None = None
                 ) -> tuple[list[str], int, int]:
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# API backends
# ----------------------------------------------------------------------------------------------

class OpenAITeacher(Teacher):
    """openai:MODEL - the OpenAI API, or any OpenAI-compatible server (vLLM, SGLang, Ollama) given a
    base URL (`openai:MODEL@http://host:port/v1` or $OPENAI_BASE_URL)."""

    kind = "openai"
    supports_n = True
    supports_options = True

    def __init__(self, model: str, base_url: str | None = None, **kw):
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        super().__init__(model, **kw)
        import openai

        key = os.environ.get("OPENAI_API_KEY")
        if not key:
            if not self.base_url:
                raise TeacherError("OPENAI_API_KEY is not set (export it, or give a local server: "
                                   "openai:MODEL@http://127.0.0.1:8000/v1)")
            key = "EMPTY"  # local servers usually ignore the key
        # our own retry policy replaces the SDK's (so retries are counted and bounded)
        base, query = split_query(self.base_url)
        self.client = openai.OpenAI(api_key=key, base_url=base, default_query=query or None, timeout=self.timeout,
                                    max_retries=0, http_client=bounded_http_client(
                                        deadline=self.timeout, max_bytes=self.max_reply_bytes))

    @property
    def fingerprint(self) -> str:
        """The server is part of what identifies the outputs: two servers may serve two models
        under one name."""
        return served_fingerprint(self.kind, self.model, self.base_url)

    def judge_options(self, tag: str | None, reasoning_effort: str | None) -> dict:
        """The official code's structured output: OpenAI's API gets the output's strict JSON schema;
        an OpenAI-compatible server (vLLM, ...) gets response_format json_object. Reasoning models
        get `reasoning_effort`."""
        out: dict = {}
        if tag and self.base_url:
            out["response_format"] = {"type": "json_object"}
        elif tag:
            out["response_format"] = {"type": "json_schema", "json_schema": {
                "name": tag.replace(".", "_"), "schema": prompts.json_schema(tag), "strict": True}}
        if reasoning_effort:
            out["reasoning_effort"] = reasoning_effort
        return out

    def _request(self, chat, *, n, temperature, max_tokens, options, timeout=None):
        kwargs = dict(model=self.model, messages=chat, n=n, max_completion_tokens=max_tokens,
                      timeout=timeout or self.timeout, **options)
        if temperature is not None:
            kwargs["temperature"] = temperature
        resp = self.client.chat.completions.create(**kwargs)
        if not isinstance(resp.choices, list):
            raise reply_error(resp, "choices")
        texts = [c.message.content or "" for c in sorted(resp.choices, key=lambda c: c.index)]
        u = resp.usage
        return texts, (u.prompt_tokens if u else 0), (u.completion_tokens if u else 0)

    # -- LOPD with a served teacher: vLLM's prompt log-probs --------------------------------

    def token_logprobs(self, input_ids, attention_mask, n_completion: int, temperature: float = 1.0):
        """LOPD: the served teacher's log-probs of the student's own completion tokens, [N, T] (0 on
        padding), the same contract as HFTeacher.token_logprobs. Each row's unpadded ids go to the
        server as a prompt; the server must share the student's tokenizer (check_tokenizer)."""
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
        keys = [hashlib.sha256(json.dumps([self.fingerprint, "prompt_logprobs", s]).encode()).hexdigest()
                for s in seqs]
        out: list = [None] * len(seqs)
        todo = []
        for i, key in enumerate(keys):
            hit = self._cached(key, role)
            if hit is not None:
                out[i] = json.loads(hit)
            else:
                todo.append(i)
        chunks = [todo[s:s + batch] for s in range(0, len(todo), batch)]
        sends = [functools.partial(self._prompt_logprobs, [seqs[i] for i in c]) for c in chunks]

        def store(k: int, res) -> None:  # as each chunk arrives: an interrupt loses none that came back
            if isinstance(res, BaseException):
                return
            for i, (lp, _) in zip(chunks[k], res[0]):
                out[i] = lp
                if self.cache is not None:
                    self.cache.put(keys[i], json.dumps(lp), len(seqs[i]), 0)

        for res in self.transport.send_all(sends, role, on_result=store):
            if isinstance(res, BaseException):
                self._fail(res)
        return out

    def check_tokenizer(self, tokenizer, text: str = "Answer: 12 + 34 = 46.\nThe quick brown fox (x/y)!") -> None:
        """LOPD sends the student's token ids: the served model must read them as the same tokens.
        The server's decoded token for each id of a probe must be the student tokenizer's."""
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        res = self.transport.send(functools.partial(self._prompt_logprobs, [ids]), "logprobs")
        if isinstance(res, BaseException):
            self._fail(res)
        served = res[0][0][1]
        ours = [tokenizer.decode([i]) for i in ids[1:]]
        if any(d is None for d in served):  # a check that cannot be made is not a check that passed
            raise TeacherError(f"{self.fingerprint} sends no decoded_token with its prompt log-probs, so "
                               f"its tokenizer cannot be checked against the student's; LOPD refuses it")
        if any(d != o for d, o in zip(served, ours)):
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
        lp = float(d["logprob"])
        if not lp <= 1e-4:  # a log-probability is at most 0 (a little float slack); NaN fails too
            raise TeacherError(f"prompt log-probs: token {tid} at position {t} has log-prob {lp}, which no "
                               f"probability has; the server's scores cannot be trained on")
        logprobs.append(lp)
        decoded.append(d.get("decoded_token"))
    return logprobs, decoded


class _RequestBudget(threading.local):
    """What the request this thread is sending may still take: a deadline and a number of bytes."""
    deadline: float = math.inf
    bytes_left: int = DEFAULT_MAX_REPLY_BYTES


class _BoundedStream:
    """A connection whose every read and write is held to the request's whole deadline (a server
    sending 1 byte a second never trips a per-read timeout) and whose reads count against the
    reply-size cap (an endless body would fill the memory)."""

    def __init__(self, inner, budget: _RequestBudget, cap: int):
        self._inner, self._budget, self._cap = inner, budget, cap

    def _time_left(self, timeout: float | None) -> float:
        left = self._budget.deadline - time.monotonic()
        if left <= 0:
            import httpcore2
            raise httpcore2.ReadTimeout("the whole request ran past --request-timeout")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = self._inner.read(max_bytes, self._time_left(timeout))
        self._budget.bytes_left -= len(data)
        if self._budget.bytes_left < 0:
            import httpcore2
            raise httpcore2.ReadError(f"the reply is over --max-reply-bytes {self._cap}")
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._time_left(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        return _BoundedStream(self._inner.start_tls(ssl_context, server_hostname, self._time_left(timeout)),
                              self._budget, self._cap)

    def get_extra_info(self, info: str):
        return self._inner.get_extra_info(info)


class _BoundedBackend:
    """The connection pool's network backend, handing out _BoundedStreams."""

    def __init__(self, inner, budget: _RequestBudget, cap: int):
        self._inner, self._budget, self._cap = inner, budget, cap

    def connect_tcp(self, *args, **kwargs):
        return _BoundedStream(self._inner.connect_tcp(*args, **kwargs), self._budget, self._cap)

    def connect_unix_socket(self, *args, **kwargs):
        return _BoundedStream(self._inner.connect_unix_socket(*args, **kwargs), self._budget, self._cap)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def bounded_http_client(*, deadline: float, max_bytes: int):
    """An HTTP client for the SDKs (they use httpx2) whose requests each end, like a 5xx that is
    retried, when the whole request takes more than `deadline` seconds (the SDK's own timeout is
    per read, so a trickling server is never timed out) or the reply exceeds `max_bytes`."""
    import httpx2

    class BoundedTransport(httpx2.HTTPTransport):
        def __init__(self):
            super().__init__(limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=100))
            self.budget = _RequestBudget()
            self._pool._network_backend = _BoundedBackend(self._pool._network_backend, self.budget, max_bytes)

        def handle_request(self, request):
            # the reply is read in this thread, after this returns: the budget is the thread's
            self.budget.deadline, self.budget.bytes_left = time.monotonic() + deadline, max_bytes
            return super().handle_request(request)

    return httpx2.Client(transport=BoundedTransport(), timeout=deadline, follow_redirects=True)


class ReplyError(RuntimeError):
    """An HTTP 200 whose body is an error object (or lacks what the API promised): treated as the
    error it carries, by its status (retried like a 5xx when it names none)."""

    def __init__(self, message: str, status_code: int):
        super().__init__(message)
        self.status_code = status_code


# what the OpenAI and Anthropic error objects' "type" / "code" mean as an HTTP status
_ERROR_STATUS = {"rate_limit_error": 429, "rate_limit_exceeded": 429, "overloaded_error": 529, "api_error": 500,
                 "server_error": 500, "invalid_request_error": 400, "authentication_error": 401,
                 "invalid_api_key": 401, "permission_error": 403, "not_found_error": 404, "model_not_found": 404}


def reply_error(resp, field: str) -> ReplyError:
    """The error a 200 reply without `field` carries: {"error": {"message", "type", "code"}}
    (OpenAI, vLLM) or {"type": "error", "error": {...}} (Anthropic); a 500 if it carries none."""
    extra = getattr(resp, "model_extra", None) or {}
    err = extra.get("error", getattr(resp, "error", None))
    if not isinstance(err, dict):
        return ReplyError(f"an HTTP 200 reply without {field!r} and without an error object", 500)
    code, kind = err.get("code"), err.get("type")
    status = code if isinstance(code, int) and 400 <= code < 600 else _ERROR_STATUS.get(code, _ERROR_STATUS.get(kind, 500))
    return ReplyError(f"an HTTP 200 reply carrying this error: {str(err.get('message') or kind)[:200]}", status)


def served_fingerprint(kind: str, model: str, base_url: str | None) -> str:
    """kind:model@server: the server is part of what identifies the outputs (two servers may serve
    two models under one name); credentials inside the URL are not (nor may they reach the cache)."""
    return f"{kind}:{model}" + ("@" + _QUERY_SECRET.sub(r"\1***", _URL_CREDENTIALS.sub(r"\1", base_url))
                                if base_url else "")


class AnthropicTeacher(Teacher):
    """anthropic:MODEL - the Anthropic messages API ($ANTHROPIC_BASE_URL for another host).
    One sample per request (the API has no `n`); temperature is not sent (see `_request`)."""

    kind = "anthropic"

    def __init__(self, model: str, base_url: str | None = None, **kw):
        self.base_url = base_url or os.environ.get("ANTHROPIC_BASE_URL")
        super().__init__(model, **kw)
        import anthropic

        key = os.environ.get("ANTHROPIC_API_KEY")
        if not key:
            raise TeacherError("ANTHROPIC_API_KEY is not set")
        base, query = split_query(self.base_url)
        self.client = anthropic.Anthropic(api_key=key, base_url=base, default_query=query or None,
                                          timeout=self.timeout, max_retries=0, http_client=bounded_http_client(
                                              deadline=self.timeout, max_bytes=self.max_reply_bytes))

    @property
    def fingerprint(self) -> str:
        return served_fingerprint(self.kind, self.model, self.base_url)

    def _request(self, chat, *, n, temperature, max_tokens, options, timeout=None):
        system = "\n\n".join(m["content"] for m in chat if m["role"] == "system")
        messages = [m for m in chat if m["role"] != "system"]
        kwargs = dict(model=self.model, messages=messages, max_tokens=max_tokens, timeout=timeout or self.timeout)
        if system:
            kwargs["system"] = system
        # no temperature: API version 2026-10-21 (SDK 2.x) rejects every sampling parameter, so
        # the model's default sampling is what a Claude teacher gets
        resp = self.client.messages.create(**kwargs)
        if not isinstance(resp.content, list):
            raise reply_error(resp, "content")
        text = "".join(getattr(b, "text", "") for b in resp.content)
        return [text], resp.usage.input_tokens, resp.usage.output_tokens


# ----------------------------------------------------------------------------------------------
# Local backends
# ----------------------------------------------------------------------------------------------

class HFTeacher(Teacher):
    """hf:PATH - a local transformers causal LM: generation, and token log-probs for LOPD."""

    kind = "hf"

    def __init__(self, path: str, batch_size: int = 64, device: str | None = None, **kw):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        super().__init__(str(path), **kw)
        if not Path(path).exists():
            raise TeacherError(f"hf: no model at {path!r}")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.device).eval()
        self.batch_size = batch_size
        self._fp = content_fingerprint(Path(path))

    @property
    def fingerprint(self) -> str:
        """By content, not by path: the same model copied elsewhere replays the same cache."""
        return f"{self.kind}:{self._fp}"

    def _run(self, requests, role, on_result=None):
        """All requests in a few batched `generate` calls (a local model gains nothing from threads).
        Each sample is seeded by its own cache key (grpo.RowSeededSampling), so it is the same text
        whatever else shares its batch, and whether or not the cache had it."""
        # one batch never mixes temperatures: sort the samples by it
        flat = sorted(((ri, r, key) for ri, r in enumerate(requests) for key in r.keys),
                      key=lambda x: -1.0 if x[1].temperature is None else x[1].temperature)
        texts: list[list[str]] = [[] for _ in requests]
        tokens = [[0, 0] for _ in requests]
        s = 0
        while s < len(flat):
            temp = flat[s][1].temperature
            chunk = [x for x in flat[s:s + self.batch_size] if x[1].temperature == temp]
            s += len(chunk)
            ro = grpo.sample(self.hf_model, self.tokenizer, [r.chat for _, r, _ in chunk], n=1,
                             max_new_tokens=max(r.max_tokens for _, r, _ in chunk),
                             temperature=1.0 if temp is None else temp,
                             row_seeds=[int(key[:15], 16) for _, _, key in chunk])
            for k, (ri, r, _) in enumerate(chunk):
                texts[ri].append(ro.texts[k])
                tokens[ri][0] += int(ro.prompt_mask[k].sum())
                tokens[ri][1] += int(ro.completion_mask[k].sum())
        self.transport.count(role, calls=len(requests), samples=len(flat),
                             input_tokens=sum(t[0] for t in tokens), output_tokens=sum(t[1] for t in tokens))
        return [(t, a, b) for t, (a, b) in zip(texts, tokens)]

    def check_tokenizer(self, tokenizer) -> None:
        """LOPD scores the student's token ids: the teacher must share the student's tokenizer."""
        if self.tokenizer.get_vocab() != tokenizer.get_vocab():
            raise TeacherError(f"{self.fingerprint} does not share the student's tokenizer (no shared vocabulary: "
                               f"its log-probs cannot score the student's token ids; a text-only method can "
                               f"learn from it: ropd, tjudge, ovd, sft)")

    def token_logprobs(self, input_ids, attention_mask, n_completion: int, temperature: float = 1.0):
        """LOPD: the teacher's log-probs of the student's own token ids (same tokenizer required)."""
        with torch.no_grad():
            return grpo.token_logprobs(self.hf_model, input_ids.to(self.device),
                                       attention_mask.to(self.device), n_completion,
                                       temperature=temperature).float().cpu()


def content_fingerprint(folder: Path, block: int = 1 << 20, whole_below: int = 256 << 20) -> str:
    """A hash of a model folder's files by content (name, size, bytes): not its path or mtimes. A
    file over `whole_below` bytes is hashed by 16 evenly spaced blocks and its size (a 60 GB
    teacher in seconds, not minutes)."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        size = f.stat().st_size
        h.update(f"{f.name}\0{size}\0".encode())
        with open(f, "rb") as fh:
            if size <= whole_below:
                h.update(fh.read())
                continue
            for k in range(16):
                fh.seek(k * (size - block) // 15)
                h.update(fh.read(block))
    return h.hexdigest()[:16]


class ToyTeacher(HFTeacher):
    """toy or toy:WORLD (a world's name or folder) - the toy world's teacher model, and the deterministic toy judge for
    rubricator / verifier / T-Judge prompts (recognised by their schema tags)."""

    kind = "toy"

    def __init__(self, root: str | None = None, **kw):
        self.toy_world = toy.load_world(root)
        super().__init__(str(self.toy_world.teacher_path), **kw)

    def _run(self, requests, role, on_result=None):
        out: list = [None] * len(requests)
        model_reqs = []
        for i, r in enumerate(requests):
            if prompts.schema_tag(r.chat):
                text = toy.toy_judge(r.chat)
                tin = sum(len(m["content"]) for m in r.chat)  # one token per character
                out[i] = ([text] * r.n, tin * r.n, len(text) * r.n)
                self.transport.count(role, calls=1, samples=r.n, input_tokens=tin * r.n,
                                     output_tokens=len(text) * r.n)
            else:
                model_reqs.append(i)
        if model_reqs:
            for i, res in zip(model_reqs, super()._run([requests[i] for i in model_reqs], role)):
                out[i] = res
        return out


# ----------------------------------------------------------------------------------------------
# Specs
# ----------------------------------------------------------------------------------------------

SPEC_HELP = "openai:MODEL, openai:MODEL@URL, anthropic:MODEL, hf:PATH, toy, toy:WORLD (a name or a folder)"


def check_spec(spec: str) -> tuple[str, str, str | None]:
    """A spec's (kind, model, url), refusing a bad one in one line before anything is loaded: an
    unknown kind, no model, a toy world or a local model that is not there."""
    kind, _, rest = spec.partition(":")
    if kind not in ("toy", "hf", "openai", "anthropic"):
        raise TeacherError(f"unknown teacher spec {spec!r}; expected one of: {SPEC_HELP}")
    if kind != "toy" and not rest:
        raise TeacherError(f"teacher spec {spec!r} names no model; expected one of: {SPEC_HELP}")
    model, _, url = rest.partition("@") if kind in ("openai", "anthropic") else (rest, "", "")
    if kind == "toy" and rest and rest not in toy.WORLDS and not (Path(rest) / "world.json").is_file():
        raise TeacherError(f"{spec}: no toy world at {rest} (a world's name is one of {', '.join(toy.WORLDS)}; "
                           f"python toy.py --root {rest} builds one in a folder)")
    if kind == "hf" and not Path(rest).is_dir():
        raise TeacherError(f"{spec}: no model folder at {rest}")
    return kind, model, url or None


def load(spec: str, **kw) -> Teacher:
    """teacher.load(spec): openai:MODEL[@URL] | anthropic:MODEL[@URL] | hf:PATH | toy[:WORLD_DIR].

    Keyword arguments go to the Teacher (cache, concurrency, rpm, retries, timeout, ...).
    """
    kind, model, url = check_spec(spec)
    if kind == "toy":
        return ToyTeacher(model or None, **kw)
    if kind in ("openai", "anthropic"):
        return (OpenAITeacher if kind == "openai" else AnthropicTeacher)(model, base_url=url, **kw)
    return HFTeacher(model, **kw)


def load_teacher_and_judge(teacher: str, judge: str | None = None, **kw) -> tuple[Teacher, Teacher]:
    """The teacher and the judge (rubricator / verifier); the judge is the teacher itself unless
    another spec is named. Keyword arguments go to both (cache, concurrency, rpm, timeout, ...)."""
    kw["cache"] = open_cache(kw.get("cache", "default"))  # one connection, shared by both
    t = load(teacher, **kw)
    return t, (t if not judge or judge == teacher else load(judge, **kw))


def check_reference_index(teacher: Teacher, chats: list, *, temperature: float | None, max_tokens: int,
                          new_settings: bool = False) -> list[str]:
    """The teacher index's keys of the prompts not yet indexed with these settings; a prompt indexed
    with other settings is an error (unless `new_settings`). A run checks its whole dataset with it
    before its first paid call (a conflict at step 2 would come after step 1 was paid for)."""
    settings = {"temperature": temperature, "max_tokens": max_tokens}
    unindexed = []  # the prompts whose index entry is missing or (with new_settings) other
    for c in chats if teacher.cache is not None else []:
        key = hashlib.sha256(json.dumps([teacher.fingerprint, "references", c], sort_keys=True).encode()).hexdigest()
        old = teacher.cache.index_get(key)
        if old is not None and old != settings and not new_settings:
            raise TeacherError(f"the teacher index ({teacher.cache.path}) holds references of {teacher.fingerprint} "
                               f"made with {old}; this run asks {settings}. Pass --new-references to pay for "
                               f"new ones, or use another --cache")
        if old != settings:
            unindexed.append(key)
    return unindexed


def references(teacher: Teacher, chats: list, *, k: int, temperature: float | None, max_tokens: int,
               new_settings: bool = False) -> list[list[str]]:
    """Eq. 1: K answers of the teacher per prompt (the official code's "teacher index"). They do not
    depend on the student, so the cache makes them a one-time cost: a rerun, a resumed run or
    another method replays them. Returns every answer that came back (duplicates included; the
    judge drops them); a request that failed for good leaves its RequestError in place of the text
    (the group falls back, and says why). As officially,
    asking for a prompt's references with other settings than those it was indexed with is an
    error, not a silent second bill, unless `new_settings` (--new-references) says to pay again."""
    settings = {"temperature": temperature, "max_tokens": max_tokens}
    unindexed = check_reference_index(teacher, chats, temperature=temperature, max_tokens=max_tokens,
                                      new_settings=new_settings)
    outs = teacher.complete(chats, n=k, temperature=temperature, max_tokens=max_tokens, role="reference",
                            return_exceptions=True)
    if unindexed:
        teacher.cache.index_put(unindexed, settings)
    return [[x for x in o if not isinstance(x, str) or x.strip()] for o in outs]


# ----------------------------------------------------------------------------------------------
# Transport plumbing: the cache, usage accounting, rate limit, and which errors a retry can fix.
# Nothing below is ROPD; it keeps paid calls from being lost or repeated.
# ----------------------------------------------------------------------------------------------

def default_cache_path() -> Path:
    return Path(os.environ.get("ROPD_CACHE", Path.home() / ".cache" / "ropd")) / "teacher_cache.sqlite"


def open_cache(cache: "Cache | str | Path | None") -> "Cache | None":
    """A backend's cache: an open Cache as it is, a path opened, "default" the default path, None none."""
    if cache == "default":
        cache = default_cache_path()
    return Cache(cache) if isinstance(cache, (str, Path)) else cache


class Cache:
    """A persistent key -> (text, input tokens, output tokens) store in one sqlite file.

    Thread-safe; every write is committed at once, so nothing paid for is lost if the run dies.
    """

    def __init__(self, path: str | Path, wait: float = 60.0):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._memory: dict = {}        # answers not yet written (the disk was full, the file locked)
        self._index_memory: dict = {}
        self._retry_at, self._warned = 0.0, False
        if self.path.is_dir():
            raise TeacherError(f"--cache {self.path} is a directory; give it a file name (e.g. {self.path}/cache.sqlite)")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TeacherError(f"--cache {self.path}: cannot create its folder ({e.strerror})") from None
        deadline = time.monotonic() + wait
        while True:  # two processes opening one cache at the same moment: the second waits its turn
            try:
                self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=wait)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("CREATE TABLE IF NOT EXISTS completions (key TEXT PRIMARY KEY, text TEXT, "
                                 "input_tokens INTEGER, output_tokens INTEGER, created REAL)")
                self._db.execute("CREATE TABLE IF NOT EXISTS reference_index (key TEXT PRIMARY KEY, settings TEXT)")
                self._db.commit()
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise TeacherError(f"--cache {self.path}: {e}") from None
                time.sleep(random.uniform(0.05, 0.25))
            except sqlite3.DatabaseError as e:
                raise TeacherError(f"--cache {self.path} is not a teacher cache ({e}); move it away or "
                                   f"give another --cache") from None

    def get(self, key: str):
        with self._lock:
            if key in self._memory:
                return self._memory[key][:3]
            try:
                return self._db.execute("SELECT text, input_tokens, output_tokens FROM completions "
                                        "WHERE key = ?", (key,)).fetchone()
            except sqlite3.Error:  # locked past `wait`, or unreadable: a miss (the answer is asked again)
                return None

    def put(self, key: str, text: str, input_tokens: int, output_tokens: int):
        """Store an answer. A write that fails (a full disk, a cache locked by another process for
        longer than `wait`) keeps it in memory for this run, says so once, and is written with
        the next write that succeeds: a paid answer is never dropped, and never ends the run."""
        with self._lock:
            self._memory[key] = (text, input_tokens, output_tokens, time.time())
            self._flush("completions", self._memory)

    def _flush(self, table: str, rows: dict):
        """Write `rows` (key -> row) to `table` and forget them, or keep them if the write fails."""
        if time.monotonic() < self._retry_at:  # failed a moment ago: do not wait `wait` s per answer
            return
        try:
            self._db.executemany(f"INSERT OR REPLACE INTO {table} VALUES ({', '.join('?' * (1 + len(next(iter(rows.values())))))})",
                                 [(k, *v) for k, v in rows.items()])
            self._db.commit()
            rows.clear()
        except (sqlite3.Error, UnicodeError, OSError) as e:
            with contextlib.suppress(sqlite3.Error):
                self._db.rollback()
            self._retry_at = time.monotonic() + 30.0
            if not self._warned:
                self._warned = True
                log.warning("--cache %s: cannot store answers (%s); keeping them in memory for this run "
                            "(they are written when the cache can be)", self.path, e)

    def __len__(self):
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM completions").fetchone()[0] + len(self._memory)

    def index_get(self, key: str):
        """The settings a prompt's references were made with (the teacher index), or None."""
        with self._lock:
            try:
                row = self._index_memory.get(key) or self._db.execute(
                    "SELECT settings FROM reference_index WHERE key = ?", (key,)).fetchone()
            except sqlite3.Error as e:  # before any paid call: say so rather than guess
                raise TeacherError(f"--cache {self.path}: cannot read the teacher index ({e})") from None
        return None if row is None else json.loads(row[0])

    def index_put(self, keys: list[str], settings: dict):
        with self._lock:
            self._index_memory.update({k: (json.dumps(settings),) for k in keys})
            self._flush("reference_index", self._index_memory)


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


def _retry_after(exc) -> float | None:
    """The server's Retry-After (seconds, milliseconds or an HTTP date), or None when it gave none
    or gave something unreadable ("soon")."""
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    try:
        if headers.get("retry-after-ms"):
            return float(headers["retry-after-ms"]) / 1000
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return float(value)
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (ValueError, TypeError, OverflowError):
        return None


def classify(exc: BaseException) -> str:
    """'retry' (transient), 'fatal' (stop the run: the key or model is wrong) or 'fail' (this request
    cannot succeed, e.g. a prompt too long; counted as a failure, the run goes on). A 200 whose
    body is cut off or is not JSON is a hiccup of the server or the network: retried like a 5xx."""
    status = getattr(exc, "status_code", None)
    if status is not None:
        if status in (408, 409, 429) or status >= 500:
            return "retry"
        return "fatal" if status in (401, 403, 404) else "fail"
    name = type(exc).__name__
    if isinstance(exc, (TimeoutError, ConnectionError, json.JSONDecodeError)) or name in (
            "APITimeoutError", "APIConnectionError", "APIResponseValidationError", "RemoteProtocolError"):
        return "retry"
    return "fail"


SECRET_ENV = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")
# (?<!\w): a scheme starts a word. Without it, each of the n positions of a long run of word
# characters would scan to the run's end looking for "://" (100,000 characters: 16 s; now linear).
_URL_CREDENTIALS = re.compile(r"(?<!\w)(\w+://)[^\s/@:]+(?::[^\s/@]*)?@")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")
# a key in a URL's query string (gateways and Azure-style endpoints take one: ...?api-key=KEY)
_QUERY_SECRET = re.compile(r"(?i)([?&](?:api[_-]?key|key|token|access[_-]?token|auth|secret|password|sig|"
                           r"signature)=)[^&#\s\"'():;,<>]+")
_SECRETS: set[str] = set()  # secrets that are in no environment variable (a URL's query key)


def remember_secret(value: str) -> None:
    """A secret that redact() must hide wherever it shows up (a key given in a URL's query string,
    echoed back by a server in a reply)."""
    if value and len(value) > 4:
        _SECRETS.add(value)


def split_query(url: str | None) -> tuple[str | None, dict[str, str]]:
    """A base URL without its query string, and the query's fields: the SDKs join paths onto the
    base URL (a query left in it would be sent as ...?api-key=KEYchat/completions), so the fields go
    as the client's default_query; the secret-looking ones are remembered for redaction."""
    if not url or "?" not in url:
        return url, {}
    base, _, query = url.partition("?")
    fields = dict(urllib.parse.parse_qsl(query.split("#")[0], keep_blank_values=True))
    for name, value in fields.items():
        if _QUERY_SECRET.fullmatch(f"?{name}={value}"):
            remember_secret(value)
    return base, fields


def redact(obj):
    """The one redaction every text passes before it reaches a file or the terminal: the API keys
    in the environment, credentials inside URLs (http://user:KEY@host, ...?api-key=KEY), keys
    remembered from a URL's query string and bearer tokens become ***. Linear time. Strings, and the strings inside lists, tuples and dicts (a metrics line, a config)."""
    if isinstance(obj, str):
        for key in [os.environ.get(var) for var in SECRET_ENV] + sorted(_SECRETS):
            if key and len(key) > 4:
                obj = obj.replace(key, "***")
        return _QUERY_SECRET.sub(r"\1***", _BEARER.sub(r"\1***", _URL_CREDENTIALS.sub(r"\1***@", obj)))
    if isinstance(obj, dict):
        return {k: redact(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v) for v in obj)
    return obj


_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_reply(text: str) -> str:
    """What a reply's text is stored and used as: redacted (a server may echo the key it was sent)
    and with any lone surrogate (which no file or database can encode) replaced by U+FFFD."""
    return redact(_SURROGATE.sub("\ufffd", text)) if isinstance(text, str) else text


def describe(exc: BaseException) -> str:
    """One line, no secrets; never empty (a refused connection's message can be)."""
    if isinstance(exc, (RequestError, TeacherError)):
        return redact(str(exc))[:300]
    status = getattr(exc, "status_code", None)
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause).strip() and str(cause).strip() not in msg:
        msg = f"{msg} ({str(cause).strip().splitlines()[0]})" if msg else str(cause).strip().splitlines()[0]
    prefix = f"HTTP {status}: " if status is not None else f"{type(exc).__name__}: "
    return redact(prefix + (msg or "no message"))[:300]


class RequestError(RuntimeError):
    """A request that failed for good (after its retries), with a one-line, redacted reason: what
    reaches the caller, the logs and samples.jsonl instead of the SDK's raw exception."""


@dataclass(frozen=True)
class BreakerConfig:
    """The official code's circuit breaker, one per stage (its providers file's values): it opens
    after `consecutive` retriable errors in a row, or when at least `rate` of the last `window`
    attempts ended in a retriable error; open, every request fails fast for `cooldown` seconds;
    then `probes` requests go through (half-open): all succeed -> closed; any retriable error ->
    open again."""
    consecutive: int = 5
    window: int = 20
    rate: float = 0.2
    cooldown: float = 30.0
    probes: int = 2


class CircuitBreaker:
    """One stage's breaker (see BreakerConfig). A retriable error (a timeout, a refused connection,
    HTTP 408/429/5xx) counts against it, on every attempt, retries included; a success resets the
    run of errors; an error a retry cannot fix (a 400) resets it too and is not counted as one.
    `clock` is injectable for tests."""

    def __init__(self, config: BreakerConfig = BreakerConfig(), clock=time.monotonic):
        self.config, self.clock = config, clock
        self.lock = threading.Lock()
        self.state, self.opened_at = "closed", 0.0
        self.run = 0                                           # retriable errors in a row
        self.recent: collections.deque = collections.deque(maxlen=config.window)  # True: a retriable error
        self.probing = self.probed = 0                         # half-open: probes in flight / succeeded

    def allow(self) -> bool:
        """May a request go out now? Open: no, until the cooldown is over (then half-open). Half-open:
        only `probes` requests at a time."""
        with self.lock:
            if self.state == "open":
                if self.clock() - self.opened_at < self.config.cooldown:
                    return False
                self.state, self.probing, self.probed = "half-open", 0, 0
            if self.state == "half-open":
                if self.probing >= self.config.probes:
                    return False
                self.probing += 1
            return True

    def success(self):
        with self.lock:
            self.run = 0
            self.recent.append(False)
            if self.state == "half-open":
                self.probing, self.probed = max(0, self.probing - 1), self.probed + 1
                if self.probing == 0 and self.probed >= self.config.probes:
                    self.state, self.run, self.probing, self.probed = "closed", 0, 0, 0
                    self.recent.clear()

    def retriable_error(self):
        with self.lock:
            self.run += 1
            self.recent.append(True)
            full = len(self.recent) >= self.config.window
            if (self.state == "half-open" or self.run >= self.config.consecutive
                    or full and sum(self.recent) / len(self.recent) >= self.config.rate):
                self.state, self.opened_at, self.probing, self.probed = "open", self.clock(), 0, 0

    def other_error(self):
        """An error no retry fixes: not the server's health; it breaks a run of retriable errors."""
        with self.lock:
            self.run = 0
            if self.state == "half-open":
                self.probing = max(0, self.probing - 1)


class Transport:
    """How a backend's calls are sent: each with retries (exponential backoff with jitter, capped,
    honouring Retry-After), bounded concurrency (a thread pool), a requests-per-minute limit and a
    per-role circuit breaker (CircuitBreaker, the official rule); usage is counted per role."""

    def __init__(self, name, *, concurrency: int = 8, rpm: float | None = None, retries: int = 2,
                 backoff_base: float = 1.0, backoff_cap: float = 8.0, breaker: BreakerConfig | None = None,
                 clock=time.monotonic):
        self.name = name  # -> the teacher's fingerprint, for messages
        self.concurrency, self.retries = concurrency, retries
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.breaker_config, self.clock = breaker or BreakerConfig(), clock
        self.limiter = RateLimiter(rpm)
        self.usage: dict[str, RoleUsage] = {}
        self.lock = threading.Lock()
        self.breakers: dict[str, CircuitBreaker] = {}

    def breaker(self, role: str) -> CircuitBreaker:
        with self.lock:
            return self.breakers.setdefault(role, CircuitBreaker(self.breaker_config, self.clock))

    def count(self, role: str, **increments: int):
        """Add to a role's usage counters (thread-safe)."""
        with self.lock:
            u = self.usage.setdefault(role, RoleUsage())
            for k, v in increments.items():
                setattr(u, k, getattr(u, k) + v)

    def send_all(self, sends: list, role: str, on_result=None) -> list:
        """Run zero-argument API calls (each -> (results, input tokens, output tokens)) with bounded
        concurrency, each with its own retries; the results, or the exceptions, in order.
        `on_result(index, result)` runs as each one is answered (the caller stores it at once).

        Daemon threads, not a ThreadPoolExecutor: on Ctrl-C the pool's shutdown (and interpreter
        exit) would wait for every request in flight, a minute for a slow one; here the
        interrupt stops the batch at once, and no new request starts."""
        results: list = [None] * len(sends)
        todo, stop = list(range(len(sends)))[::-1], threading.Event()
        lock = threading.Lock()

        def work():
            while not stop.is_set():
                with lock:
                    if not todo:
                        return
                    i = todo.pop()
                try:
                    results[i] = self.send(sends[i], role)
                    if on_result is not None:
                        on_result(i, results[i])
                except Exception as e:  # noqa: BLE001 - a failure to store is the caller's to report
                    results[i] = e

        if len(sends) <= 1 or self.concurrency <= 1:
            work()
            return results
        threads = [threading.Thread(target=work, daemon=True) for _ in range(min(self.concurrency, len(sends)))]
        try:
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(0.1)  # a bounded wait: the main thread sees KeyboardInterrupt at once
        finally:
            stop.set()
        return results

    def send(self, send, role: str):
        """One API call: retries with backoff; a TeacherError for fatal errors; else the exception."""
        self.count(role)
        breaker = self.breaker(role)
        for attempt in range(self.retries + 1):
            if not breaker.allow():
                self.count(role, failures=1)
                c = self.breaker_config
                return CircuitOpenError(f"{self.name()}: circuit breaker open for role {role!r} ({c.consecutive} "
                                        f"retriable errors in a row, or >= {c.rate:.0%} of the last {c.window}); "
                                        f"failing fast for {c.cooldown:g} s")
            self.limiter.acquire()
            self.count(role, calls=1)
            try:
                texts, tin, tout = send()
            except TeacherError as e:
                breaker.other_error()
                return e
            except Exception as e:  # noqa: BLE001 - classified below
                kind = classify(e)
                breaker.retriable_error() if kind == "retry" else breaker.other_error()
                if kind == "fatal":
                    return TeacherError(f"{self.name()}: {describe(e)}")
                if kind == "retry" and attempt < self.retries:
                    wait = min(self.backoff_cap, self.backoff_base * 2 ** attempt) * random.uniform(0.5, 1.0)
                    after = _retry_after(e)
                    if after is not None:
                        wait = max(wait, min(after, 60.0))
                    log.warning(f"{self.name()} [{role}] {describe(e)}; retry {attempt + 1}/{self.retries} "
                                f"in {wait:.1f}s")
                    self.count(role, retries=1)
                    time.sleep(wait)
                    continue
                log.warning("%s [%s] failed: %s", self.name(), role, describe(e))
                self.count(role, failures=1)
                return RequestError(describe(e))
            self.count(role, samples=len(texts), input_tokens=tin, output_tokens=tout)
            breaker.success()
            return texts, tin, tout
        raise AssertionError("unreachable")
