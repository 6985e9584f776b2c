"""Rollout throughput and peak memory: the `hf` sampler (grpo.sample: the policy's own generate,
rollouts leaving the batch at their EOS), the same with a static KV cache (`--static-cache`, which
transformers compiles with torch.compile on a GPU) and the `vllm` sampler (sampler.py: a vLLM
engine in the process), same model, same prompts, same lengths, at several batch sizes, in one run
on one machine, as ratios to `hf`.

    python bench/rollouts.py                                   # CPU: batch 64-256, 128 tokens
    python bench/rollouts.py --device cuda --hidden 1024 --layers 8 --lengths 512 2048

The model is a randomly initialised Qwen2 with the toy tokenizer (head size 64, which vLLM's CPU
attention takes), saved once and loaded by each measurement. A random model stops at EOS now and
then, so each side's generated token count is printed; tokens per second is generated tokens over
wall time, the median of --rounds rounds after --warmup rounds (compilation, CUDA graphs). Every
measurement runs in a fresh subprocess, so peaks and engines do not leak between methods. Peak
memory: the process's RSS high-water mark on a CPU (model, engine and KV cache included; vLLM's
CPU KV cache is --kv-cache-gb, allocated whole), torch.cuda.max_memory_reserved on a GPU (vLLM
reserves --gpu-memory-utilization of the GPU up front, whatever the batch needs).
vLLM: where this Python has no vLLM, the vllm rows run with --vllm-python (default: the tests'
environment, ~/.cache/ropd/vllm-venv, when it is there); otherwise they are skipped, saying so.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import grpo  # noqa: E402
import sampler  # noqa: E402
import toy  # noqa: E402
from data import load_model  # noqa: E402
from grpo_step import make_model  # noqa: E402  (bench/, this script's folder)

METHODS = ("hf", "static", "vllm")
VLLM_VENV = Path(os.environ.get("ROPD_VLLM_VENV", Path.home() / ".cache" / "ropd" / "vllm-venv"))


def measure(method: str, model_path: str, *, batch: int, length: int, device: str, rounds: int, warmup: int,
            kv_cache_gb: int, gpu_memory_utilization: float) -> dict:
    """One (method, batch, length): generated tokens and seconds per round, peak memory (this process)."""
    dev = torch.device(device)
    model, tok = load_model(model_path, dev)
    if dev.type == "cuda":
        model = model.to(torch.bfloat16)
    group = 8
    prompts = [p.question for p in toy.make_problems(max(1, batch // group), seed=1)]
    seeds = list(range(len(prompts) * group))
    engine = None
    if method == "vllm":
        engine = sampler.start_engine(model_path, device=dev, seed=0, cpu_kv_cache_gb=kv_cache_gb,
                                      gpu_memory_utilization=gpu_memory_utilization)
        sampler.load_policy_weights(engine, model)
    times, tokens = [], []
    for r in range(warmup + rounds):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        if engine is None:
            ro = grpo.sample(model, tok, prompts, n=group, max_new_tokens=length, row_seeds=seeds,
                             static_cache=method == "static")
        else:
            ro = sampler.sample(engine, tok, prompts, n=group, max_new_tokens=length, temperature=1.0,
                                row_seeds=seeds, eos=grpo.eos_ids(tok, model))
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if r >= warmup:
            times.append(time.perf_counter() - t0)
            tokens.append(int(ro.completion_mask.sum()))
    peak = (torch.cuda.max_memory_reserved() / 2**20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if engine is not None:
        sampler.shutdown(engine)
    return {"seconds": statistics.median(times), "tokens": statistics.mean(tokens), "peak_mb": peak}


def vllm_python(given: str | None) -> str | None:
    """A Python that can import vLLM: --vllm-python, this one, or the tests' environment."""
    if given:
        return given
    import importlib.util
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    venv = VLLM_VENV / "bin" / "python"
    return str(venv) if venv.exists() else None


def run_one(python: str, method: str, model_path: Path, a, *, batch: int, length: int) -> dict | str:
    """measure() in a fresh process: its result, or why it failed (the end of its output)."""
    cmd = [python, __file__, "--one", method, str(model_path), str(batch), str(length), "--device", a.device,
           "--rounds", str(a.rounds), "--warmup", str(a.warmup), "--kv-cache-gb", str(a.kv_cache_gb),
           "--gpu-memory-utilization", str(a.gpu_memory_utilization)]
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "ERROR", "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    last = [x for x in r.stdout.splitlines() if x.startswith("{")]
    if r.returncode != 0 or not last:
        tail = [x for x in (r.stderr + r.stdout).splitlines() if x.strip()][-1:]
        return f"failed: {tail[0] if tail else r.returncode}"
    return json.loads(last[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256], help="rollouts per round (8 per prompt)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[128], help="max new tokens")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--kv-cache-gb", type=int, default=2, help="vLLM's KV cache on a CPU")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.3, help="vLLM's share of a GPU")
    ap.add_argument("--vllm-python", help="a Python with vLLM for the vllm rows (default: see above)")
    ap.add_argument("--one", nargs=4, metavar=("METHOD", "MODEL", "BATCH", "LENGTH"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:
        method, model_path, batch, length = a.one
        print(json.dumps(measure(method, model_path, batch=int(batch), length=int(length), device=a.device,
                                 rounds=a.rounds, warmup=a.warmup, kv_cache_gb=a.kv_cache_gb,
                                 gpu_memory_utilization=a.gpu_memory_utilization)))
        return
    root = Path(tempfile.mkdtemp(prefix="bench-rollouts-"))
    model_path = make_model(root, a.hidden, a.layers, max_positions=8192)
    pythons = {"hf": sys.executable, "static": sys.executable, "vllm": vllm_python(a.vllm_python)}
    print(f"model: Qwen2 hidden {a.hidden}, {a.layers} layers, toy vocabulary; device {a.device}; "
          f"median of {a.rounds} rounds after {a.warmup} warm-up; 8 rollouts per prompt, temperature 1.0")
    print("\n| rollouts | max tokens | sampler | generated tokens | s | tokens/s | peak MB | speed vs hf |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for length in a.lengths:
        for batch in a.batches:
            base = None
            for method in a.methods:
                if pythons[method] is None:
                    print(f"| {batch} | {length} | {method} | skipped: no Python with vLLM (--vllm-python) | | | | |")
                    continue
                res = run_one(pythons[method], method, model_path, a, batch=batch, length=length)
                if isinstance(res, str):
                    print(f"| {batch} | {length} | {method} | {res} | | | | |")
                    continue
                speed = res["tokens"] / res["seconds"]
                base = speed if method == "hf" else base
                ratio = f"{speed / base:.2f}x" if base else "—"
                print(f"| {batch} | {length} | {method} | {res['tokens']:.0f} | {res['seconds']:.2f} | {speed:,.0f} | "
                      f"{res['peak_mb']:,.0f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
