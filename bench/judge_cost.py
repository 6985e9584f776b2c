"""Teacher and judge cost per training sample of `ropd` at the default (toy preset) settings.

    python bench/judge_cost.py                     # reads runs/ropd (the default run's metrics)
    python bench/judge_cost.py --run results/runs/ropd-s0

A training sample is one rollout (G = 8 per prompt). Counts come from the run's metrics.jsonl, so
they are real calls made by that run (cache hits excluded). Token counts are those the backend
reported; the toy backend counts one token per character, so for an LLM judge divide the toy's
figures by the characters per token of its tokenizer (about 3-4 for English and math); the call
counts carry over unchanged.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/ropd")
    a = ap.parse_args()
    run = Path(a.run)
    args = json.loads((run / "args.json").read_text())
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = len(metrics)
    prompts = steps * args["prompts_per_step"]
    rollouts = prompts * args["rollouts"]
    roles: dict[str, dict[str, int]] = {}
    for m in metrics:
        for role, u in m.get("usage", {}).items():
            r = roles.setdefault(role, {"calls": 0, "input_tokens": 0, "output_tokens": 0})
            for k in r:
                r[k] += u.get(k, 0)
    print(f"run {run}: method {args['method']}, teacher {args['teacher']}, judge {args['judge'] or args['teacher']}; "
          f"{steps} steps x {args['prompts_per_step']} prompts x {args['rollouts']} rollouts, "
          f"K = {args['references']} references")
    print(f"{'role':<12}{'calls/prompt':>14}{'calls/sample':>14}{'in tok/sample':>15}{'out tok/sample':>16}")
    total = {"calls": 0, "input_tokens": 0, "output_tokens": 0}
    for role, r in roles.items():
        print(f"{role:<12}{r['calls'] / prompts:>14.3f}{r['calls'] / rollouts:>14.3f}"
              f"{r['input_tokens'] / rollouts:>15,.0f}{r['output_tokens'] / rollouts:>16,.0f}")
        for k in total:
            total[k] += r[k]
    print(f"{'all':<12}{total['calls'] / prompts:>14.3f}{total['calls'] / rollouts:>14.3f}"
          f"{total['input_tokens'] / rollouts:>15,.0f}{total['output_tokens'] / rollouts:>16,.0f}")


if __name__ == "__main__":
    main()
