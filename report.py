"""report.py - the comparison's tables and plots, and the README's figures, from the runs run.sh made.

    python report.py results                     # tables, plots and summary.md from results/
    python report.py results --readme README.md  # also rewrite the README's generated sections
    python report.py results --check README.md   # exit 1 if the README's figures differ from results/

Layout (run.sh writes it): results/<world>/runs/<method>-s<seed>/ is one ropd.py run (args.json,
metrics.jsonl, summary.json, or refused.txt when the method cannot run in that world);
results/<world>/world.json the world as built (accuracies, weight fingerprints);
results/<world>/signal.json `eval.py signal` on the initial student; results/default-run.json the
README's first command. Per world this writes results.md, results.json and accuracy.png; over all
worlds summary.md. The x axis is training prompts seen (steps x prompts per step), the same budget
for every method; "samples" are prompts x rollouts (the paper's sample-efficiency unit, §4.1).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

METHODS = ("ropd", "lopd", "exopd", "tjudge", "ovd", "gad", "sft", "grpo")  # the tables' row order
WORLD_ORDER = ("default", "mimicry", "xtok", "imperfect")
# Student's t quantile t(0.975, df) for df = 1..30: the 95% interval of a mean over a few seeds
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


@dataclass
class Run:
    method: str
    seed: int
    curve: list[tuple[int, float]]      # (training prompts seen, held-out accuracy), step 0 first
    rollouts: int                       # G: samples per prompt
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
    return Run(args["method"], args["seed"], curve, rollouts=args["rollouts"], seconds=seconds, judge=judge)


def mean_ci(xs: list[float]) -> tuple[float, float]:
    """The mean and the half-width of its 95% t-interval over seeds (0 for one seed)."""
    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return mean, 0.0
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return mean, T975[min(n, len(T975)) - 2] * sd / math.sqrt(n)


def mean_curve(runs: list[Run]) -> list[tuple[int, float]]:
    """Accuracy averaged over seeds at the sample counts every seed evaluated."""
    common = set.intersection(*(set(x for x, _ in r.curve) for r in runs))
    return [(x, sum(dict(r.curve)[x] for r in runs) / len(runs)) for x in sorted(common)]


def first_reaching(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first training-prompt count (after step 0) whose accuracy is >= target; None if never."""
    return next((x for x, acc in curve[1:] if acc >= target - 1e-9), None)


def to_target(runs: list[Run], target: float) -> dict:
    """§4.1's sample efficiency: the samples (prompts x rollouts) each seed needed to reach the
    target accuracy; the median over the seeds that reached it, and the range."""
    per_seed = [first_reaching(r.curve, target) for r in runs]
    got = sorted(x * r.rollouts for x, r in zip(per_seed, runs) if x is not None)
    return {"reached": len(got), "seeds": len(runs), "median": got[len(got) // 2] if got else None,
            "min": got[0] if got else None, "max": got[-1] if got else None}


def world_stats(by_method: dict[str, list[Run]], refused: dict[str, str]) -> dict:
    """Per method: final accuracy (mean, 95% interval over seeds), its best point, and the samples
    to reach LOPD's best seed-mean accuracy (the paper's 1.6k vs 15.4k, ×9.6)."""
    lopd = by_method.get("lopd")
    target = max(a for _, a in mean_curve(lopd)[1:]) if lopd else None
    out = {"lopd_best": target, "refused": refused, "methods": {}}
    for method, runs in by_method.items():
        mean, half = mean_ci([r.curve[-1][1] for r in runs])
        curve = mean_curve(runs)
        out["methods"][method] = {
            "seeds": [r.seed for r in runs], "before": curve[0][1], "final": mean, "ci95": half,
            "finals": [r.curve[-1][1] for r in runs], "best": max(a for _, a in curve),
            "to_lopd_best": to_target(runs, target) if target is not None else None,
            "seconds": sum(r.seconds for r in runs) / len(runs), "judge_calls": sum(r.judge.get("calls", 0) for r in runs) / len(runs),
            "curve": curve}
    return out


def fmt_samples(t: dict | None) -> str:
    if not t or not t["reached"]:
        return "not reached" if t else "n/a"
    spread = f" ({t['min']:,}-{t['max']:,})" if t["min"] != t["max"] else ""
    return f"{t['median']:,}{spread}, {t['reached']}/{t['seeds']} seeds"


def world_table(stats: dict) -> str:
    head = ("| method | seeds | before | final (mean ± 95% CI) | best | samples to LOPD's best | "
            "× fewer than LOPD | train s | judge calls |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    lopd = (stats["methods"].get("lopd") or {}).get("to_lopd_best") or {}
    for method, m in stats["methods"].items():
        t = m["to_lopd_best"]
        ratio = (f"{lopd['median'] / t['median']:.1f}" if t and t["median"] and lopd.get("median") else "")
        lines.append(f"| {method} | {len(m['seeds'])} | {m['before']:.1%} | {m['final']:.1%} ± {m['ci95']:.1%} | "
                     f"{m['best']:.1%} | {fmt_samples(t)} | {ratio} | {m['seconds']:.0f} | {m['judge_calls']:,.0f} |")
    for method, why in stats["refused"].items():  # its one line, up to the explanation in brackets
        lines.append(f"| {method} | refused | | {why.split(' (')[0]} | | | | | |")
    return "\n".join(lines)


def signal_table(signal: dict | None) -> str:
    if not signal:
        return "(no signal analysis)"
    rows = [f"| {name} | {v['auc']:.3f} | {v['group_auc']:.3f} |" for name, v in signal["signals"].items()]
    return "\n".join([f"{signal['rollouts']} rollouts of the initial student on {signal['prompts']} held-out prompts, "
                      f"{signal['correct_frac']:.1%} correct:", "", "| signal | AUC | in-group AUC |",
                      "| --- | --- | --- |", *rows])


def plot(by_method: dict[str, list[Run]], path: Path, title: str) -> bool:
    """Seed-mean accuracy against training prompts seen, with the 95% band; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, runs in by_method.items():
        xs = [x for x, _ in mean_curve(runs)]
        band = [mean_ci([dict(r.curve)[x] for r in runs]) for x in xs]
        ys = [m for m, _ in band]
        ax.plot(xs, ys, marker="o", ms=3, label=f"{method} ({len(runs)} seed{'s' * (len(runs) > 1)})")
        ax.fill_between(xs, [m - h for m, h in band], [m + h for m, h in band], alpha=0.15)
    ax.set_xlabel("training prompts seen")
    ax.set_ylabel("held-out accuracy (greedy)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def load_world(folder: Path) -> tuple[dict[str, list[Run]], dict[str, str]]:
    """A world's finished runs by method (table order), and the methods it refused, with why."""
    found = [load_run(p.parent) for p in sorted((folder / "runs").glob("*/summary.json"))]
    by_method: dict[str, list[Run]] = {}
    for r in sorted(found, key=lambda r: (METHODS.index(r.method) if r.method in METHODS else 99, r.seed)):
        by_method.setdefault(r.method, []).append(r)
    refused = {}
    for p in sorted((folder / "runs").glob("*/refused.txt")):
        method = p.parent.name.rsplit("-s", 1)[0]
        refused.setdefault(method, p.read_text().strip())
    return by_method, refused


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def verdicts(name: str, stats: dict, world: dict | None) -> list[str]:
    """What each world was built to show, read off its numbers (README, "Worlds"): the claim, and
    whether the intervals over seeds support it."""
    m = stats["methods"]

    def cmp(a: str, b: str) -> str:
        x, y = m[a], m[b]
        if x["final"] - x["ci95"] > y["final"] + y["ci95"]:
            return f"{a} > {b}"
        if x["final"] + x["ci95"] < y["final"] - y["ci95"]:
            return f"{a} < {b}"
        return f"{a} ≈ {b} (intervals overlap)"
    out = []
    if "ropd" in m and "lopd" in m:
        out.append(f"final accuracy: {cmp('ropd', 'lopd')} ({m['ropd']['final']:.1%} vs {m['lopd']['final']:.1%})")
        t, lo = m["ropd"]["to_lopd_best"], m["lopd"]["to_lopd_best"]
        if t and t["median"] and lo and lo["median"]:
            out.append(f"samples to LOPD's best ({stats['lopd_best']:.1%}): ropd {t['median']:,} vs lopd "
                       f"{lo['median']:,} (×{lo['median'] / t['median']:.1f})")
        elif t is not None:
            out.append(f"ropd reached LOPD's best ({stats['lopd_best']:.1%}) in {t['reached']}/{t['seeds']} seeds")
    if stats["refused"]:
        out.append("refused: " + ", ".join(sorted(stats["refused"])) + "; ran: " + ", ".join(m))
    if world and "ropd" in m:
        teacher, x = world["teacher_accuracy"], m["ropd"]
        where = ("passes its teacher" if x["final"] - x["ci95"] > teacher else "ends below its teacher"
                 if x["final"] + x["ci95"] < teacher else "ends level with its teacher (the interval holds it)")
        out.append(f"ropd's student {x['final']:.1%} ± {x['ci95']:.1%}, its teacher {teacher:.1%}: {where}")
    return out


def summarise(out: Path) -> tuple[dict, str]:
    """Every world under `out`: its tables, plot and results.json; returns (all stats, summary.md)."""
    worlds = [w for w in WORLD_ORDER if (out / w / "runs").is_dir()]
    worlds += sorted(p.name for p in out.iterdir() if (p / "runs").is_dir() and p.name not in worlds)
    everything = {}
    md = ["# The comparison on the toy worlds", "",
          "Made by `bash run.sh` (every method x world x seed, then `python report.py results`); the README's",
          "\"Worlds\" says what each world is built to expose. Per world: results.md, results.json, accuracy.png,",
          "world.json (the world as built), signal.json (`eval.py signal` on the initial student).", ""]
    for name in worlds:
        by_method, refused = load_world(out / name)
        if not by_method:
            continue
        stats = world_stats(by_method, refused)
        world, signal = read_json(out / name / "world.json"), read_json(out / name / "signal.json")
        stats["world"] = world and {k: world[k] for k in ("teacher_accuracy", "student_accuracy", "fingerprints")}
        stats["signal"] = signal and {k: signal[k] for k in ("prompts", "rollouts", "correct_frac", "signals")}
        stats["verdicts"] = verdicts(name, stats, world)
        everything[name] = stats
        table = world_table(stats)
        (out / name / "results.md").write_text(table + "\n")
        (out / name / "results.json").write_text(json.dumps(stats, indent=2))
        plot(by_method, out / name / "accuracy.png", f"toy world '{name}': held-out accuracy by method")
        head = f"### {name}" + (f" (teacher {world['teacher_accuracy']:.1%}, student {world['student_accuracy']:.1%} "
                                 f"held-out)" if world else "")
        md += [head, "", table, "", signal_table(stats["signal"]), "",
               *[f"- {v}" for v in stats["verdicts"]], "", f"![{name}]({name}/accuracy.png)", ""]
    return everything, "\n".join(md)


# ----------------------------------------------------------------------------------------------
# The README's generated sections: written from results/, checked by a test
# ----------------------------------------------------------------------------------------------

SECTION = re.compile(r"(<!-- generated:(\S+) -->\n)(.*?)(<!-- end generated -->)", re.S)


def default_run_section(run: dict) -> str:
    """The README's first result: what `python ropd.py` prints, and its held-out curve."""
    steps = [0] + [s for s, _ in run["curve"][1:]]
    accs = [a for _, a in run["curve"]]
    return "\n".join([
        "```", run["first_line"], run["last_line"], "```", "",
        "| step | " + " | ".join(map(str, steps)) + " |", "| --- |" + " --- |" * len(steps),
        f"| held-out accuracy (greedy, {run['problems']} problems) | " + " | ".join(f"{a:.1%}" for a in accs) + " |",
        "", f"World `{run['world']}` (weights {run['fingerprints']['teacher']} / {run['fingerprints']['student']}); "
            f"{run['seconds']:.0f} s on {run['machine']} from an empty cache (the shipped world is loaded, not built), "
            f"while other jobs shared the machine."])


def comparison_section(stats: dict) -> str:
    lines = []
    for name, s in stats.items():
        lines += [f"**{name}**" + (f" — teacher {s['world']['teacher_accuracy']:.1%}, student "
                                    f"{s['world']['student_accuracy']:.1%}" if s["world"] else ""), "",
                  world_table(s), ""]
        if s["signal"]:
            lines += ["Signal AUC, initial student: " + ", ".join(
                f"{k} {v['auc']:.3f}" for k, v in s["signal"]["signals"].items()), ""]
        lines += [f"- {v}" for v in s["verdicts"]] + [""]
    return "\n".join(lines).rstrip() + "\n"


def sections(out: Path, stats: dict) -> dict[str, str]:
    found = {}
    run = read_json(out / "default-run.json")
    if run:
        found["default-run"] = default_run_section(run)
    if stats:
        found["comparison"] = comparison_section(stats)
    return found


def rewrite(text: str, found: dict[str, str]) -> str:
    """The README with each generated section replaced by what results/ says now."""
    return SECTION.sub(lambda m: m.group(1) + (found.get(m.group(2), m.group(3)).rstrip("\n") + "\n") + m.group(4),
                       text)


def cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    names = [ln.split(":", 1)[1].strip() for ln in info.read_text().splitlines()
             if ln.startswith("model name")] if info.exists() else []
    return names[0] if names else platform.processor() or platform.machine()


def record_default_run(run_dir: Path, log: Path, seconds: float, world: dict) -> dict:
    """results/default-run.json: what the README's first command printed (its first and last
    lines, from the log run.sh kept), its held-out curve, the world's fingerprints, the time."""
    printed = [ln.strip() for ln in log.read_text().splitlines()]
    last = next(ln for ln in printed if ln.startswith("held-out accuracy:"))
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    summary = json.loads((run_dir / "summary.json").read_text())
    curve = [(0, summary["accuracy_before"])] + [(m["step"], m["eval_accuracy"]) for m in metrics if "eval_accuracy" in m]
    curve.append((summary["steps"], summary["accuracy_after"]))
    return {"first_line": next(ln for ln in printed if ln.startswith("ropd: ")), "last_line": last,
            "curve": curve, "problems": int(re.search(r"\((\d+) problems\)", last).group(1)),
            "world": "default", "fingerprints": world["fingerprints"], "seconds": seconds,
            "machine": f"{os.cpu_count()} cores of {cpu_name()}"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", default="results", help="run.sh's output folder")
    ap.add_argument("--readme", default=None, help="rewrite this README's generated sections")
    ap.add_argument("--check", default=None, help="exit 1 if this README's generated sections differ")
    ap.add_argument("--default-run", nargs=4, metavar=("RUN_DIR", "LOG", "SECONDS", "WORLD_JSON"), default=None,
                    help="record the README's first command (run.sh) into OUT/default-run.json")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if not out.is_dir():
        print(f"error: no results folder {out}")
        return 2
    if args.default_run:
        run_dir, log, seconds, world = args.default_run
        rec = record_default_run(Path(run_dir), Path(log), float(seconds), read_json(Path(world)))
        (out / "default-run.json").write_text(json.dumps(rec, indent=2))
        print(f"{rec['first_line']}\n{rec['last_line']}\n({rec['seconds']:.0f} s)")
        return 0
    if args.check:  # the committed results, not the (uncommitted) runs behind them
        stats = {w: s for w, s in ((w, read_json(out / w / "results.json")) for w in WORLD_ORDER) if s}
    else:
        stats, md = summarise(out)
        if stats:
            (out / "summary.md").write_text(md)
            print(md)
    found = sections(out, stats)
    path = args.readme or args.check
    if path:
        text = Path(path).read_text()
        new = rewrite(text, found)
        if args.check and new != text:
            print(f"{path}: its generated sections differ from {out} (python report.py {out} --readme {path})")
            return 1
        if args.readme and new != text:
            Path(path).write_text(new)
            print(f"rewrote {path}'s generated sections: {', '.join(found)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
