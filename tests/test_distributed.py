"""Many processes (torchrun, FSDP2, gloo on the CPU): the same run at any world size.

Two processes must give what one gives: the gradient of a mini-batch (for every loss
aggregation), the rollouts and rewards of every step, the weights after a few steps; and a run
resumes exactly at its world size, and at another (the optimizer state resharded)."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import grpo
import ropd
from test_ropd import metrics

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import dist_gradient  # noqa: E402


def torchrun(n: int, *args):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}",
                        f"--master_port={port}", *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, "\n".join((r.stdout + r.stderr).splitlines()[-25:])


def lopd_args(world, out, *extra):
    """A few LOPD steps on the tiny world: its garbage student still gets non-zero per-token advantages."""
    return ["--method", "lopd", "--world", world.root, "--teacher", f"hf:{world.teacher_path}", "--out", out,
            "--cache", Path(out).parent / "cache.sqlite", "--prompts-per-step", "4", "--rollouts", "3",
            "--mini-batches", "2", "--max-new-tokens", "16", "--eval-samples", "4", "--eval-every", "0",
            "--save-every", "1", "--log-samples", "-1", *extra]


def weights(run: Path, step: int) -> dict:
    return load_file(run / f"checkpoint-{step:06d}" / "model.safetensors")


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("agg", grpo.INVARIANT_AGGREGATIONS)
def test_the_gradient_of_a_mini_batch_is_the_one_process_gradient(agg, tiny_world, tmp_path):
    dist_gradient.main(str(tiny_world.root), agg, str(tmp_path / "one.pt"))
    torchrun(2, "tests/dist_gradient.py", tiny_world.root, agg, tmp_path / "two.pt")
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert max(v.abs().max().item() for v in one["grads"].values()) > 1e-3  # a real gradient
    assert max_diff(one["grads"], two["grads"]) < 1e-5
    for k, v in one["stats"].items():  # the ranks' shares of the statistics add up
        assert two["stats"][k] == pytest.approx(v, abs=1e-6)


def test_two_processes_train_like_one(tiny_world, tmp_path):
    assert ropd.main([str(x) for x in lopd_args(tiny_world, tmp_path / "one", "--steps", "3")]) == 0
    torchrun(2, "ropd.py", *lopd_args(tiny_world, tmp_path / "two", "--steps", "3"))
    one, two = [[json.loads(x) for x in (tmp_path / r / "samples.jsonl").read_text().splitlines()] for r in ("one", "two")]
    assert [s["rollouts"] for s in one] == [s["rollouts"] for s in two]  # seeded per rollout, not per rank
    for a, b in zip(metrics(tmp_path / "one"), metrics(tmp_path / "two")):
        for k in ("reward_mean", "pg_loss", "grad_norm", "clip_frac"):
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-8), k
    assert max_diff(weights(tmp_path / "one", 3), weights(tmp_path / "two", 3)) < 1e-6


def test_resume_at_two_processes_and_from_two_to_one(tiny_world, tmp_path):
    torchrun(2, "ropd.py", *lopd_args(tiny_world, tmp_path / "whole", "--steps", "4"))
    torchrun(2, "ropd.py", *lopd_args(tiny_world, tmp_path / "cut", "--steps", "2"))
    torchrun(2, "ropd.py", *lopd_args(tiny_world, tmp_path / "cut", "--steps", "4", "--resume", tmp_path / "cut"))
    whole = weights(tmp_path / "whole", 4)
    assert max_diff(whole, weights(tmp_path / "cut", 4)) == 0.0  # exact at the same world size
    # the optimizer state of two ranks, resharded into one process
    assert ropd.main([str(x) for x in lopd_args(tiny_world, tmp_path / "one", "--steps", "4", "--resume",
                                                tmp_path / "cut" / "checkpoint-000002")]) == 0
    assert max_diff(whole, weights(tmp_path / "one", 4)) < 1e-6
    assert [m["step"] for m in metrics(tmp_path / "one")] == [3, 4]
