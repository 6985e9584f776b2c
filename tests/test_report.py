"""report.py over real (tiny) ropd.py runs: curves, final accuracy, teacher traffic, the table."""
import json

import report
import ropd
from tests.test_ropd import tiny_args


def test_report_over_two_tiny_runs(tiny_world, tmp_path):
    runs = tmp_path / "runs"
    for m in ("sft", "grpo"):
        assert ropd.main(tiny_args(tiny_world, tmp_path, "--eval-every", "1", method=m,
                                   out=f"runs/{m}-s0")) == 0
    assert report.main([str(runs), "--out", str(tmp_path / "res"), "--threshold", "0.0"]) == 0
    md = (tmp_path / "res" / "results.md").read_text().splitlines()
    assert md[0].startswith("| method |") and len(md) == 4
    assert [ln.split("|")[1].strip() for ln in md[2:]] == ["sft", "grpo"]  # the paper's order

    sft = report.load_run(runs / "sft-s0")
    summary = json.loads((runs / "sft-s0" / "summary.json").read_text())
    metrics = [json.loads(x) for x in (runs / "sft-s0" / "metrics.jsonl").read_text().splitlines()]
    # 3 prompts per step: step 0, then the evaluation after each of the 2 steps
    assert [x for x, _ in sft.curve] == [0, 3, 6]
    assert sft.curve[0][1] == summary["accuracy_before"] and sft.curve[-1][1] == summary["accuracy_after"]
    assert sft.judge["calls"] == sum(u["calls"] for m in metrics for u in m["usage"].values()) > 0
    assert report.load_run(runs / "grpo-s0").judge["calls"] == 0  # outcome reward: no teacher at all
    assert report.samples_to_reach(sft.curve, 0.0) == 0
    assert report.samples_to_reach([(0, 0.1), (5, 0.6), (9, 0.7)], 0.65) == 9
    assert report.samples_to_reach([(0, 0.1)], 0.5) is None


def test_mean_curve_uses_points_every_seed_has():
    a = report.Run("ropd", 0, [(0, 0.5), (10, 0.7), (20, 0.9)], 1.0)
    b = report.Run("ropd", 1, [(0, 0.5), (20, 0.7)], 1.0)
    assert report.mean_curve([a, b]) == [(0, 0.5), (20, 0.8)]
