"""Peak memory and time of per-token log-probs at a 151k vocabulary, forward alone (no grad) and
forward + backward: grpo.token_logprobs against the naive full log-softmax, against TRL 1.16's
chunked kernel and, optionally, against grpo.py as it was at another git revision.

    python bench/logprobs.py                             # CPU: lengths 1k-8k, batch 1
    python bench/logprobs.py --lengths 1024 4096 --device cuda
    python bench/logprobs.py --baseline 862efa7          # adds "prev": token_logprobs at that commit
    python bench/logprobs.py --interleave --repeat 5 --methods ropd prev --baseline 862efa7  # time only

Every measurement runs in a fresh subprocess, so peaks do not leak between methods. The model is
a 1-layer Qwen2 (hidden 256, vocabulary 151,936: Qwen's), so the output head dominates, as it does
for the log-prob step of a real model. Peak memory is what the step adds on top of the model and
inputs: RSS high-water mark on CPU (the first call, cold), torch.cuda.max_memory_allocated on GPU
(after an untimed call that compiles kernels). The model body's activations are inside that figure
for every method alike. Time: the fastest of --repeat calls (on CPU the first one is also the
memory measurement). On a shared machine whose load changes, --interleave compares times better:
all methods in one process, call after call, medians (no memory figures).
TRL's path: the model body once, then trl.kernels.ChunkedLogProbFunction over the hidden states
(vocabulary tiles with an online logsumexp; what GRPOTrainer uses when its chunked log-prob
option is on). Needs `pip install trl==1.16.0` (benchmark only); without it, that column is skipped.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VOCAB = 151_936
METHODS = ("naive", "ropd", "trl")
PASSES = ("fwd", "fwd+bwd")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


@functools.lru_cache(maxsize=None)
def grpo_at(rev: str):
    """grpo.py as it was at git revision `rev`, imported as module grpo_at_rev (once per process)."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:grpo.py"], capture_output=True,
                         text=True, check=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "grpo_at_rev.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location("grpo_at_rev", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["grpo_at_rev"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return module


def setup(T: int, batch: int, device: str, baseline: str | None):
    """The 1-layer Qwen2 at Qwen's vocabulary, random ids, and log_probs(method, backward)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    import grpo

    prev = grpo_at(baseline) if baseline else None
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=256, intermediate_size=768, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=T + 16,
                      tie_word_embeddings=False)
    model = Qwen2ForCausalLM(cfg).to(device)
    ids = torch.randint(0, VOCAB, (batch, T), device=device)
    attn = torch.ones_like(ids)
    n_completion = T - 16  # a 16-token prompt, the rest is the completion

    def logprobs(method):
        if method == "naive":
            return grpo.naive_token_logprobs(model, ids, attn, n_completion)
        if method == "ropd":
            return grpo.token_logprobs(model, ids, attn, n_completion)
        if method == "prev":
            return prev.token_logprobs(model, ids, attn, n_completion)
        from trl.kernels import ChunkedLogProbFunction
        hidden = model.model(input_ids=ids, attention_mask=attn).last_hidden_state
        h = hidden[:, -n_completion - 1:-1].reshape(-1, hidden.shape[-1])
        targets = ids[:, -n_completion:].reshape(-1)
        # autograd's apply takes no keywords: (hidden, weight, bias, targets, temperature, chunk size)
        inputs = (h, model.lm_head.weight, None, targets, 1.0, 8192)
        out = ChunkedLogProbFunction.apply(*inputs)
        return out[0].view(batch, n_completion)

    def run(method, backward):
        with torch.set_grad_enabled(backward):
            logp = logprobs(method)
            if backward:
                logp.mean().backward()
                model.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return logp

    return run


def one(method: str, T: int, *, batch: int, device: str, backward: bool, repeat: int,
        baseline: str | None) -> dict:
    """Build the model, run the log-probs (and their backward), report time and added peak."""
    import torch

    run = setup(T, batch, device, baseline if method == "prev" else None)
    if device == "cuda":  # one untimed call first: kernel compilation (TRL's Triton) and allocator warm-up
        run(method, backward)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:  # on CPU the RSS high-water mark cannot be reset, so the first call is the measured one
        base = rss_mb()
    times = []
    for i in range(repeat):
        t0 = time.perf_counter()
        logp = run(method, backward)
        times.append(time.perf_counter() - t0)
        if i == 0:
            peak = ((torch.cuda.max_memory_allocated() - base) / 2**20 if device == "cuda"
                    else peak_rss_mb() - base)
    return {"method": method, "T": T, "batch": batch, "device": device,
            "pass": "fwd+bwd" if backward else "fwd", "seconds": round(min(times), 3),
            "peak_mb": round(peak, 1), "checksum": float(logp.detach().float().sum())}


def interleaved(a) -> None:
    """Time only, in this one process: after an untimed call of each method, each of --repeat
    rounds calls every method once, in turn, so a machine whose load drifts (a shared CPU) slows
    all methods alike; prints each method's median and the ratios of the medians."""
    import statistics

    print(f"batch {a.batch}, vocabulary {VOCAB:,}, device {a.device}; median of {a.repeat} interleaved calls")
    for p in a.passes:
        print(f"\n{p}\n{'T':>6} | " + " | ".join(f"{m + ' s':>9}" for m in a.methods)
              + "".join(f" | {x}/{y} s" for x, y in (("ropd", "prev"), ("ropd", "trl"))
                        if x in a.methods and y in a.methods))
        for T in a.lengths:
            run = setup(T, a.batch, a.device, a.baseline)
            times = {m: [] for m in a.methods}
            for r in range(a.repeat + 1):
                for m in a.methods:
                    t0 = time.perf_counter()
                    run(m, p == "fwd+bwd")
                    if r:  # round 0 warms up
                        times[m].append(time.perf_counter() - t0)
            med = {m: statistics.median(ts) for m, ts in times.items()}
            print(f"{T:>6} | " + " | ".join(f"{med[m]:>9.2f}" for m in a.methods)
                  + "".join(f" | {med[x] / med[y]:>{len(x + y) + 3}.2f}" for x, y in (("ropd", "prev"), ("ropd", "trl"))
                            if x in a.methods and y in a.methods), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--passes", nargs="+", default=list(PASSES), choices=PASSES)
    ap.add_argument("--repeat", type=int, default=1, help="calls per measurement; time = the fastest")
    ap.add_argument("--baseline", metavar="REV",
                    help='also measure token_logprobs from grpo.py at this git revision (method "prev")')
    ap.add_argument("--interleave", action="store_true",
                    help="time only: all methods in one process, alternating call by call (for a shared, noisy CPU)")
    ap.add_argument("--one", nargs=3, metavar=("METHOD", "T", "PASS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        m, T, p = a.one
        print(json.dumps(one(m, int(T), batch=a.batch, device=a.device, backward=p == "fwd+bwd", repeat=a.repeat,
                             baseline=a.baseline)))
        return
    if a.baseline and "prev" not in a.methods:
        a.methods.append("prev")
    try:
        import trl  # noqa: F401
    except ImportError:
        print("trl not installed: its column is skipped (pip install trl==1.16.0)")
        a.methods = [m for m in a.methods if m != "trl"]
    if a.interleave:
        interleaved(a)
        return
    rows = []
    for p in a.passes:
        for T in a.lengths:
            for m in a.methods:
                cmd = [sys.executable, __file__, "--one", m, str(T), p, "--batch", str(a.batch),
                       "--device", a.device, "--repeat", str(a.repeat)]
                proc = subprocess.run(cmd + (["--baseline", a.baseline] if a.baseline else []),
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    err = (proc.stderr.strip().splitlines() or ["killed (out of memory?)"])[-1]
                    rows.append({"method": m, "T": T, "pass": p, "error": err[:120]})
                else:
                    rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                r = rows[-1]
                print(f"  {p:>7} {m:>6} T={T:>5}: " + (f"{r['seconds']:7.2f} s  {r['peak_mb']:9.1f} MB"
                                                       if "error" not in r else r["error"]), flush=True)
    report(rows, a)


def report(rows: list[dict], a) -> None:
    ms = a.methods
    print(f"\nbatch {a.batch}, vocabulary {VOCAB:,}, device {a.device}; peak = memory added on top of "
          f"the model and inputs; time = fastest of {a.repeat}")
    for p in a.passes:
        by_T = {T: {r["method"]: r for r in rows if r["T"] == T and r["pass"] == p and "error" not in r}
                for T in a.lengths}

        def ratio(by, x, y, key):
            return f"{by[x][key] / by[y][key]:.2f}" if x in by and y in by and by[y][key] else "-"

        pairs = [("ropd", "trl"), ("naive", "ropd"), ("ropd", "prev")]
        pairs = [(x, y) for x, y in pairs if x in ms and y in ms]
        print(f"\n{p}")
        print(f"{'T':>6} | " + " | ".join(f"{m + ' s':>9} {m + ' MB':>10}" for m in ms) + " | "
              + " | ".join(f"{x}/{y} MB, s" for x, y in pairs))
        for T, by in by_T.items():
            cells = [f"{by[m]['seconds']:>9.2f} {by[m]['peak_mb']:>10.0f}" if m in by else f"{'-':>9} {'-':>10}"
                     for m in ms]
            ratios = [f"{ratio(by, x, y, 'peak_mb'):>{len(x + y) + 4}}, {ratio(by, x, y, 'seconds')}"
                      for x, y in pairs]
            print(f"{T:>6} | " + " | ".join(cells) + " | " + " | ".join(ratios))
        same = {T: {m: round(r["checksum"], 1) for m, r in by.items()} for T, by in by_T.items()}
        print("sum of log-probs per method (should agree):", json.dumps(same))
    failed = [r for r in rows if "error" in r]
    for r in failed:
        print(f"failed: {r['pass']} {r['method']} T={r['T']}: {r['error']}")


if __name__ == "__main__":
    main()
