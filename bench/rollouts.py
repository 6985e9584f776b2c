"""Rollout throughput: plain `generate` against a static KV cache (which transformers compiles with
torch.compile on a GPU), same model, same prompts, same lengths, in one run on one machine.

    python bench/rollouts.py --device cuda --hidden 1024 --layers 8 --length 512
    python bench/rollouts.py                         # CPU, a small model (the static cache is not compiled there)

The model is a randomly initialised Qwen2 with the toy tokenizer (a random model rarely stops, so
nearly every rollout runs to --length: the token counts are printed to compare like with like).
Sampling is grpo.sample's per-rollout seeded sampling, so both runs produce the same tokens.
The first --warmup rounds (compilation) are not counted; tokens per second is generated tokens
over wall time.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import grpo  # noqa: E402
import toy  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    a = ap.parse_args(argv)
    tok = toy.build_tokenizer()
    model = toy.build_model(tok, hidden=a.hidden, layers=a.layers, heads=max(1, a.hidden // 64), seed=0,
                            max_positions=4096).to(a.device).eval()
    if a.device.startswith("cuda"):
        model = model.to(torch.bfloat16)
    prompts = [p.question for p in toy.make_problems(a.prompts, seed=1)]
    seeds = list(range(a.prompts * a.group))
    results = {}
    for name, static in (("generate", False), ("static cache", True)):
        times, tokens, texts = [], [], None
        for r in range(a.warmup + a.rounds):
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            ro = grpo.sample(model, tok, prompts, n=a.group, max_new_tokens=a.length, row_seeds=seeds,
                             static_cache=static)
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            if r >= a.warmup:
                times.append(time.perf_counter() - t0)
                tokens.append(int(ro.completion_mask.sum()))
            texts = ro.texts
        results[name] = (statistics.median(times), statistics.mean(tokens), texts)
        print(f"{name:>13}: {statistics.median(times):7.2f} s/round, {statistics.mean(tokens):8.0f} tokens, "
              f"{statistics.mean(tokens) / statistics.median(times):9.0f} tokens/s")
    (tp, _, tt), (ts, _, st) = results["generate"], results["static cache"]
    print(f"static / plain speed = {tp / ts:.2f}x; same tokens: {tt == st}")


if __name__ == "__main__":
    main()
