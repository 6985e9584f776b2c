"""bench/gpu.sh, the script that measures every GPU figure of the README's Performance section, run
here on the CPU with tiny shapes so that it works the first time a GPU is at hand (its figures are
not checked: only that every part ran and printed its table, and that the log-prob methods agree).
Needs TRL (requirements-dev.txt) and vLLM (test_vllm's environment): marked integration."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_vllm import vllm_python

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


def test_gpu_sh_runs_every_part_with_tiny_shapes_on_the_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "VLLM_PYTHON": str(vllm_python()), "TMPDIR": str(tmp_path)}
    r = subprocess.run(["bash", "bench/gpu.sh", "--tiny"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
    out = r.stdout
    assert r.returncode == 0, out[-3000:] + (tmp_path / "bench-gpu-sh.log").read_text()[-3000:]
    assert "failed or cut off" not in out
    titles = re.findall(r"^## (\d)\. ", out, re.M)
    assert titles == ["1", "2", "3", "4"]
    assert re.search(r"^TRL / ropd\.py = [\d.]+x per step, [\d.]+x per generated token$", out, re.M)
    sums = [json.loads(x.split("(should agree): ")[1]) for x in out.splitlines() if "(should agree)" in x]
    assert len(sums) == 2 and all(len(set(v.values())) == 1 for s in sums for v in s.values())
    for method in ("hf", "static", "vllm"):  # a row with figures for each sampler
        assert re.search(rf"^\| 8 \| 16 \| {method} \| \d+ \| [\d.]+ \| [\d,]+ \| [\d,]+ \| [\d.]+x \|$", out, re.M), method
    assert re.search(r"^\| tiny \| [\d.]+ M \| 1 \| cpu \| 2 x 32 \| \d+ MB \| [\d,]+ MB \| [\d,]+ MB \|$", out, re.M)
