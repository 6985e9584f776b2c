"""report.py - collect ropd.py runs into the comparison table and the accuracy plot (run.sh calls it).

    python report.py results/runs --out results --threshold 0.75

Each run directory (OUT of one `ropd.py` call: args.json, metrics.jsonl, summary.json) is one
(method, seed). The x axis is training prompts seen (steps x prompts per step), the same budget for
every method; accuracy is ropd.py's held-out greedy accuracy, logged every --eval-every steps.
Writes results.md (always), results.json, and accuracy.png when matplotlib is installed.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from ropd import METHODS  # the table's row order


@dataclass
class Run:
    method: str
    seed: int
    curve: list[tuple[int, float]]      # (training prompts seen, held-out accuracy), step 0 first
    seconds: float                      # wall time of the training steps
    judge: dict = field(default_factory=dict)   # calls / input / output tokens over the run


def load_run(path: Path) -> Run:
    args = json.loads((path / "args.json").read_text())
    summary = json.loads((path / "summary.json").read_text())
    metrics = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines() if x.strip()]
    per_step = args["prompts_per_step"]
    curve = [(0, summary["accuracy_before"])]
    curve += [(m["step"] * per_step, m["eval_accuracy"]) for m in metrics if "eval_accuracy" in m]
    end = summary["steps"] * per_step  # the accuracy after the last step is in the summary only
    if curve[-1][0] != end:
        curve.append((end, summary["accuracy_after"]))
    judge = {"calls": 0, "input_tokens": 0, "output_tokens": 0}
    for m in metrics:  # teacher traffic of the run, every role (references included)
        for u in m.get("usage", {}).values():
            for k in judge:
                judge[k] += u.get(k, 0)
    seconds = sum(m.get("seconds", {}).get("total", 0.0) for m in metrics)
    return Run(args["method"], args["seed"], curve, seconds, judge)


def mean_curve(runs: list[Run]) -> list[tuple[int, float]]:
    """Accuracy averaged over seeds at the sample counts every seed evaluated."""
    common = set.intersection(*(set(x for x, _ in r.curve) for r in runs))
    return [(x, sum(dict(r.curve)[x] for r in runs) / len(runs)) for x in sorted(common)]


def samples_to_reach(curve: list[tuple[int, float]], threshold: float) -> int | None:
    """The first sample count whose (seed-mean) accuracy is >= threshold; None if never."""
    return next((x for x, acc in curve if acc >= threshold), None)


def table(by_method: dict[str, list[Run]], threshold: float) -> str:
    head = ("| method | seeds | accuracy before | final accuracy (mean, min-max) | best | "
            f"prompts to reach {threshold:.0%} | teacher calls | input tokens | output tokens | train seconds |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for method, runs in by_method.items():
        curve = mean_curve(runs)
        finals = [r.curve[-1][1] for r in runs]
        reach = samples_to_reach(curve, threshold)
        n = len(runs)
        lines.append(
            f"| {method} | {n} | {curve[0][1]:.1%} | {sum(finals) / n:.1%} ({min(finals):.1%}-{max(finals):.1%}) | "
            f"{max(a for _, a in curve):.1%} | {reach if reach is not None else 'not reached'} | "
            f"{sum(r.judge['calls'] for r in runs) / n:,.0f} | {sum(r.judge['input_tokens'] for r in runs) / n:,.0f} | "
            f"{sum(r.judge['output_tokens'] for r in runs) / n:,.0f} | {sum(r.seconds for r in runs) / n:.0f} |")
    return "\n".join(lines)


def plot(by_method: dict[str, list[Run]], path: Path) -> bool:
    """accuracy.png: seed-mean accuracy against training prompts seen; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, runs in by_method.items():
        xs, ys = zip(*mean_curve(runs))
        ax.plot(xs, ys, marker="o", ms=3, label=f"{method} ({len(runs)} seed{'s' * (len(runs) > 1)})")
    ax.set_xlabel("training prompts seen")
    ax.set_ylabel("held-out accuracy (greedy)")
    ax.set_title("toy world: student accuracy by method")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", help="a folder of ropd.py run directories")
    ap.add_argument("--out", default="results")
    ap.add_argument("--threshold", type=float, default=0.75, help="accuracy for 'prompts to reach'")
    a = ap.parse_args(argv)
    found = [load_run(p.parent) for p in sorted(Path(a.runs).glob("*/summary.json"))]
    if not found:
        print(f"error: no finished runs (summary.json) under {a.runs}")
        return 2
    by_method: dict[str, list[Run]] = {}
    for r in sorted(found, key=lambda r: (METHODS.index(r.method) if r.method in METHODS else 99, r.seed)):
        by_method.setdefault(r.method, []).append(r)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    md = table(by_method, a.threshold)
    (out / "results.md").write_text(md + "\n")
    (out / "results.json").write_text(json.dumps(
        {m: [{"seed": r.seed, "curve": r.curve, "seconds": r.seconds, "judge": r.judge} for r in runs]
         for m, runs in by_method.items()}, indent=2))
    drew = plot(by_method, out / "accuracy.png")
    print(md)
    print(f"\nwrote {out / 'results.md'}, {out / 'results.json'}"
          + (f", {out / 'accuracy.png'}" if drew else " (no plot: pip install matplotlib)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
