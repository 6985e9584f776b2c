"""serve.py - any teacher backend on localhost, over the real OpenAI and Anthropic wire formats.

    python serve.py --teacher toy --port 8000
    # then: --teacher openai:toy@http://127.0.0.1:8000/v1   or   --teacher anthropic:toy@http://127.0.0.1:8000

Routes: POST /v1/chat/completions (OpenAI), POST /v1/messages (Anthropic), GET /v1/models, and
POST /v1/completions with token-id prompts and vLLM's `prompt_logprobs` for a local model (what
LOPD asks of a served teacher). It lets several runs share one local teacher, and it is what the
tests drive the real openai and anthropic SDKs against: `faults` injects rate limits, server
errors, delays and bad judge outputs, one per request.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import socket
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from teacher import SPEC_HELP, HFTeacher, Teacher, TeacherError, load

log = logging.getLogger("ropd.serve")


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
        self._send_raw(status, json.dumps(body).encode(), headers)

    def _send_raw(self, status: int, data: bytes, headers: dict | None = None):
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

    @property
    def route(self) -> str:
        """The request's path without its query string (a client may send ?api-key=...)."""
        return urllib.parse.urlsplit(self.path).path.rstrip("/")

    def do_GET(self):
        if self.route.endswith("/models"):
            self._send(200, {"object": "list", "data": [
                {"id": self.server.model_name, "object": "model", "owned_by": "ropd"}]})
        else:
            self._error(404, f"no route {self.path}", False)

    def do_POST(self):
        anthropic_style = self.route.endswith("/messages")
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            return self._error(400, "request body is not JSON", anthropic_style)
        self.server.count(body)
        with self.server.in_flight():
            self._handle(body, anthropic_style)

    def _handle(self, body: dict, anthropic_style: bool):
        fault = self.server.next_fault()
        if fault:
            if self.server.closing.wait(fault.get("delay", 0.0)):
                return  # stop() during a long delay: end now (stop() would wait for this thread)
            if "reply" in fault:  # a well-formed response whose text is the given (bad) output
                echo = f" you sent {dict(self.headers)} to {self.path}" if fault.get("echo_headers") else ""
                return self._reply(fault["reply"] + echo, body, anthropic_style)
            if "raw" in fault:  # a 200 whose body is not what the API promised (cut off, not JSON)
                return self._send_raw(200, fault["raw"].encode())
            if fault.get("status"):
                hdr = {"Retry-After": fault["retry_after"]} if "retry_after" in fault else None
                message = f"injected fault {fault['status']}"
                if fault.get("echo_headers"):  # as some servers do: the request's headers, key included
                    message += f"; you sent {dict(self.headers)}"
                return self._error(fault["status"], message, anthropic_style, hdr)
        if body.get("stream"):
            return self._error(400, "streaming is not supported", anthropic_style)
        try:
            if anthropic_style:
                self._anthropic(body)
            elif self.route.endswith("/chat/completions"):
                self._openai(body)
            elif self.route.endswith("/completions"):
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
        n = 1 if self.server.ignore_n else int(body.get("n") or 1)
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
    request - {"status": 429, "retry_after": 0}, {"delay": 2.0}, {"reply": "not JSON"} (a
    well-formed reply with that text), {"raw": '{"id": "cut'} (a 200 whose body is broken),
    {"status": 400, "echo_headers": True} (an error that echoes the request's headers; with
    "reply", a reply that does), or None
    for a normal answer - used by the tests to drive the real SDKs through rate limits, server errors,
    timeouts and bad judge outputs."""

    daemon_threads = True
    ignore_n = False  # True: answer one sample whatever `n` asks (as some servers do), for tests

    def __init__(self, teacher: Teacher, host: str = "127.0.0.1", port: int = 0, model_name: str | None = None,
                 faults: list[dict] | None = None, transform=None, record: bool = False):
        super().__init__((host, port), _Handler)
        self.teacher = teacher
        self.transform = transform  # (text, chat) -> the text served instead: a judge that lies, for tests
        self.model_name = model_name or teacher.model
        self.faults = list(faults or [])
        self.requests = 0
        self.record = record  # keep every request body in `bodies` (tests inspect them; a long-lived server must not)
        self.bodies: list[dict] = []
        self.busy = self.max_busy = 0  # requests being answered now, and at most at once
        self._lock = threading.Lock()
        # a local model is not thread-safe: its requests are served one at a time
        self._serial = threading.Lock() if isinstance(teacher, HFTeacher) else contextlib.nullcontext()
        self._open: dict = {}  # connection socket -> its handler thread
        self.closing = threading.Event()  # set by stop(): an injected delay ends at once

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}"

    def complete(self, chats, **kw):
        with self._serial:
            out = self.teacher.complete(chats, role="serve", **kw)
        return [[self.transform(t, c) for t in texts] for c, texts in zip(chats, out)] if self.transform else out

    def prompt_logprobs(self, prompts: list[list[int]]) -> list[list]:
        """vLLM's prompt_logprobs=0 format: per prompt, None then one {"<id>": {"logprob", "rank",
        "decoded_token"}} per following token, from the teacher model's raw (temperature 1) logits."""
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

    @contextlib.contextmanager
    def in_flight(self):
        """Counts the requests being answered at once (the tests check concurrency by it, not by time)."""
        with self._lock:
            self.busy += 1
            self.max_busy = max(self.max_busy, self.busy)
        try:
            yield
        finally:
            with self._lock:
                self.busy -= 1

    def count(self, body: dict):
        with self._lock:
            self.requests += 1
            if self.record:
                self.bodies.append(body)

    def next_fault(self):
        with self._lock:
            return self.faults.pop(0) if self.faults else None

    def token_counts(self, chat, texts):
        tok = getattr(self.teacher, "tokenizer", None)
        count = (lambda s: len(tok(s, add_special_tokens=False)["input_ids"])) if tok else (lambda s: len(s.split()))
        return sum(count(m["content"]) for m in chat), sum(count(t) for t in texts)

    def start(self) -> "TeacherServer":
        # a short poll: stop() returns within 20 ms (the default 0.5 s cost the tests ~12 s of teardown)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
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
        self.closing.set()
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
    ap.add_argument("--teacher", default="toy", help=f"teacher spec ({SPEC_HELP})")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--model-name", default=None, help="the model name clients use (default: the spec's)")
    ap.add_argument("--cache", default=None, help="sqlite cache for the served teacher (default: none)")
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
