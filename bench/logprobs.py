"""Peak memory and time of per-token log-probs (forward + backward) at a 151k vocabulary:
grpo.token_logprobs against the naive full log-softmax and against TRL 1.16's chunked path.

    python bench/logprobs.py                       # CPU: lengths 1k-8k, batch 1
    python bench/logprobs.py --lengths 1024 4096 --device cuda

Every measurement runs in a fresh subprocess, so peaks do not leak between methods. The model is
a 1-layer Qwen2 (hidden 256, vocabulary 151,936: Qwen's), so the output head dominates, as it does
for the log-prob step of a real model. Peak memory is what the step adds on top of the model and
inputs: RSS high-water mark on CPU (one call, cold), torch.cuda.max_memory_allocated on GPU (the
second call, after an untimed one that compiles kernels).
TRL's path: the model body once, then trl.kernels.ChunkedLogProbFunction over the hidden states
(vocabulary tiles with an online logsumexp; what GRPOTrainer uses when its chunked log-prob
option is on). Needs `pip install trl==1.16.0` (benchmark only); without it, that column is skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VOCAB = 151_936
METHODS = ("naive", "ropd", "trl")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def one(method: str, T: int, batch: int, device: str) -> dict:
    """Build the model, run forward + backward of the log-probs once, report time and added peak."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    import grpo

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=256, intermediate_size=768, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=T + 16,
                      tie_word_embeddings=False)
    model = Qwen2ForCausalLM(cfg).to(device)
    ids = torch.randint(0, VOCAB, (batch, T), device=device)
    attn = torch.ones_like(ids)
    n_completion = T - 16  # a 16-token prompt, the rest is the completion

    def run():
        if method == "naive":
            return grpo.naive_token_logprobs(model, ids, attn, n_completion)
        if method == "ropd":
            return grpo.token_logprobs(model, ids, attn, n_completion)
        from trl.kernels import ChunkedLogProbFunction
        hidden = model.model(input_ids=ids, attention_mask=attn).last_hidden_state
        h = hidden[:, -n_completion - 1:-1].reshape(-1, hidden.shape[-1])
        targets = ids[:, -n_completion:].reshape(-1)
        out = ChunkedLogProbFunction.apply(h, model.lm_head.weight, None, targets, 1.0, 8192)
        return out[0].view(batch, n_completion)

    if device == "cuda":  # one untimed call first: kernel compilation (TRL's Triton) and allocator warm-up
        run().mean().backward()
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:  # on CPU the RSS high-water mark cannot be reset, so the one call is the measured one
        base = rss_mb()
    t0 = time.perf_counter()
    logp = run()
    logp.mean().backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = peak_rss_mb() - base
    return {"method": method, "T": T, "batch": batch, "device": device,
            "seconds": round(time.perf_counter() - t0, 3), "peak_mb": round(peak, 1),
            "checksum": float(logp.detach().float().sum())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "T"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], int(a.one[1]), a.batch, a.device)))
        return
    try:
        import trl  # noqa: F401
    except ImportError:
        print("trl not installed: its column is skipped (pip install trl==1.16.0)")
        a.methods = [m for m in a.methods if m != "trl"]
    rows = []
    for T in a.lengths:
        for m in a.methods:
            p = subprocess.run([sys.executable, __file__, "--one", m, str(T), "--batch", str(a.batch),
                                "--device", a.device], capture_output=True, text=True)
            if p.returncode != 0:
                err = (p.stderr.strip().splitlines() or ["killed (out of memory?)"])[-1]
                rows.append({"method": m, "T": T, "error": err[:120]})
            else:
                rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"  {m:>6} T={T:>5}: " + (f"{r['seconds']:7.2f} s  {r['peak_mb']:9.1f} MB" if "error" not in r
                                            else r["error"]), flush=True)
    print(f"\nbatch {a.batch}, vocabulary {VOCAB:,}, device {a.device}; forward + backward; peak = added memory")
    print(f"{'T':>6} | " + " | ".join(f"{m + ' s':>9} {m + ' MB':>10}" for m in a.methods)
          + " | naive/ropd MB | trl/ropd MB")
    for T in a.lengths:
        by = {r["method"]: r for r in rows if r["T"] == T}
        cells = [f"{by[m]['seconds']:>9.2f} {by[m]['peak_mb']:>10.0f}" if "peak_mb" in by.get(m, {})
                 else f"{'-':>9} {'-':>10}" for m in a.methods]

        def ratio(x):
            return (f"{by[x]['peak_mb'] / by['ropd']['peak_mb']:.2f}"
                    if "peak_mb" in by.get(x, {}) and "peak_mb" in by.get("ropd", {}) else "-")
        print(f"{T:>6} | " + " | ".join(cells) + f" | {ratio('naive'):>13} | {ratio('trl'):>11}")
    same = {T: {r["method"]: round(r["checksum"], 1) for r in rows if r["T"] == T and "checksum" in r}
            for T in a.lengths}
    print("sum of log-probs per method (should agree):", json.dumps(same))


if __name__ == "__main__":
    main()
