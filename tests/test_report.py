"""report.py over real (tiny) ropd.py runs: curves, intervals, samples to a target, the README's
generated sections, and the committed results/ against the README."""
import json
import math
import statistics
from pathlib import Path

import pytest

import report
import ropd
from tests.test_ropd import tiny_args

ROOT = Path(__file__).resolve().parent.parent


def test_report_over_tiny_runs_in_a_world_folder(tiny_world, tmp_path):
    out = tmp_path / "res"
    for m, seed in (("sft", 0), ("grpo", 0), ("grpo", 1)):
        assert ropd.main(tiny_args(tiny_world, tmp_path, "--eval-every", "1", "--seed", str(seed), method=m,
                                   out=f"res/tiny/runs/{m}-s{seed}")) == 0
    (out / "tiny" / "runs" / "lopd-s0").mkdir()
    (out / "tiny" / "runs" / "lopd-s0" / "refused.txt").write_text("no shared vocabulary\n")
    assert report.main([str(out)]) == 0
    md = (out / "tiny" / "results.md").read_text().splitlines()
    assert md[0].startswith("| method | seeds |")
    assert [ln.split("|")[1].strip() for ln in md[2:]] == ["sft", "grpo", "lopd"]  # the paper's order; refused last
    assert "| lopd | refused | | no shared vocabulary |" in md[-1]
    stats = json.loads((out / "tiny" / "results.json").read_text())
    runs = out / "tiny" / "runs"
    grpo = [report.load_run(runs / f"grpo-s{s}") for s in (0, 1)]
    finals = [json.loads((runs / f"grpo-s{s}" / "summary.json").read_text())["accuracy_after"] for s in (0, 1)]
    assert stats["methods"]["grpo"]["finals"] == finals and stats["methods"]["grpo"]["seeds"] == [0, 1]
    # 3 prompts per step: step 0, then the evaluation after each of the 2 steps
    assert [x for x, _ in grpo[0].curve] == [0, 3, 6] and grpo[0].rollouts == 3
    assert stats["refused"] == {"lopd": "no shared vocabulary"}
    assert "\n### tiny\n" in (out / "summary.md").read_text()


def test_mean_ci_is_the_t_interval():
    xs = [0.5, 0.7, 0.6, 0.9, 0.8]
    mean, half = report.mean_ci(xs)
    assert mean == pytest.approx(0.7)
    assert half == pytest.approx(2.776 * statistics.stdev(xs) / math.sqrt(5))  # t(0.975, 4) = 2.776
    assert report.mean_ci([0.4]) == (0.4, 0.0)
    assert report.mean_ci([0.3, 0.5])[1] == pytest.approx(12.706 * statistics.stdev([0.3, 0.5]) / math.sqrt(2))


def test_samples_to_lopds_best():
    """§4.1: each seed's first evaluation at or above LOPD's best seed-mean accuracy, in samples
    (prompts x rollouts); step 0 never counts."""
    run = lambda m, s, curve: report.Run(m, s, curve, 8, 1.0)  # noqa: E731
    lopd = [run("lopd", 0, [(0, 0.5), (16, 0.6), (32, 0.7)]), run("lopd", 1, [(0, 0.5), (16, 0.6), (32, 0.5)])]
    ropd_runs = [run("ropd", 0, [(0, 0.5), (16, 0.7), (32, 0.9)]), run("ropd", 1, [(0, 0.5), (16, 0.5), (32, 0.65)])]
    stats = report.world_stats({"lopd": lopd, "ropd": ropd_runs}, {})
    assert stats["lopd_best"] == pytest.approx(0.6)  # the seed-mean curve's best after step 0
    assert stats["methods"]["ropd"]["to_lopd_best"] == {"reached": 2, "seeds": 2, "median": 256, "min": 128, "max": 256}
    assert stats["methods"]["lopd"]["to_lopd_best"] == {"reached": 2, "seeds": 2, "median": 128, "min": 128, "max": 128}
    assert report.first_reaching([(0, 0.9), (5, 0.1)], 0.5) is None
    table = report.world_table(stats)
    assert "| ropd | 2 | 50.0% | 77.5% ± " in table and "256 (128-256), 2/2 seeds | 0.5 |" in table
    assert "| lopd | 2 | 50.0% | 60.0% ± " in table and "128, 2/2 seeds | 1.0 |" in table


def test_mean_curve_uses_points_every_seed_has():
    a = report.Run("ropd", 0, [(0, 0.5), (10, 0.7), (20, 0.9)], 8, 1.0)
    b = report.Run("ropd", 1, [(0, 0.5), (20, 0.7)], 8, 1.0)
    assert report.mean_curve([a, b]) == [(0, 0.5), (20, 0.8)]


def test_generated_sections_are_rewritten_and_nothing_else():
    text = "intro\n<!-- generated:comparison -->\nold table\n<!-- end generated -->\noutro 1.0%\n"
    assert report.rewrite(text, {"comparison": "new\n"}) == \
        "intro\n<!-- generated:comparison -->\nnew\n<!-- end generated -->\noutro 1.0%\n"
    assert report.rewrite(text, {}) == text  # a section with no results is left as it is


def test_the_readme_figures_are_the_committed_results(capsys):
    """Every figure in the README's generated sections is what results/ holds (report.py --check),
    and both the first command's section and every world's are there."""
    readme = (ROOT / "README.md").read_text()
    assert "<!-- generated:default-run -->" in readme and "<!-- generated:comparison -->" in readme
    assert report.main([str(ROOT / "results"), "--check", str(ROOT / "README.md")]) == 0, capsys.readouterr().out
    run = json.loads((ROOT / "results" / "default-run.json").read_text())
    assert run["last_line"] in readme and run["first_line"] in readme
    world = json.loads((ROOT / "results" / "default" / "world.json").read_text())
    assert run["fingerprints"] == world["fingerprints"]  # the first command ran on the compared world
    for name in ("default", "mimicry", "xtok", "imperfect"):
        assert f"**{name}**" in readme and (ROOT / "results" / name / "results.json").exists()
