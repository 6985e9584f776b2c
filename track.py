"""track.py - experiment tracking (--report-to): each step's metrics to TensorBoard, Weights & Biases
or trackio, beside metrics.jsonl (which stays the record; nothing here is the method).

    trackers = open_trackers(["tensorboard"], out=Path("runs/x"), config=args_dict, name="x")
    log_step(trackers, metrics_line, samples)   # every step, on rank 0
    close_trackers(trackers)

Each step's line is flattened and grouped as TRL and verl do: train/ (the loss, rewards, lengths),
judge/ (fallbacks, the teacher's and judge's calls and tokens), eval/ (held-out accuracy), time/
(seconds per stage). Every --save-every steps, a small table of sampled rollouts with their reward
and rubric goes to every tracker (TensorBoard as markdown text). Each backend is an optional extra, imported only
when asked for; a missing one is a one-line error before any model is loaded.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

BACKENDS = ("tensorboard", "wandb", "trackio")  # each the pip package that provides it


def check_backends(names: list[str]) -> list[str]:
    """The backends asked for, each importable; 'none' (alone) means no tracker. Raises ValueError
    with one line that says what to install."""
    names = [n for n in names if n != "none"]
    for n in names:
        if n not in BACKENDS:
            raise ValueError(f"--report-to {n}: expected none or any of {', '.join(BACKENDS)}")
        try:
            __import__("torch.utils.tensorboard" if n == "tensorboard" else n)
        except ImportError:
            raise ValueError(f"--report-to {n} needs {n} (pip install {n})") from None
    return list(dict.fromkeys(names))


def group(key: str) -> str:
    """A metrics.jsonl key's tracker section."""
    if key.startswith("eval_"):
        return "eval/" + key[len("eval_"):]
    if key.startswith(("usage/", "fallbacks", "teacher_", "rubric_", "references_", "student_beats")):
        return "judge/" + key
    if key.startswith("seconds/"):
        return "time/" + key[len("seconds/"):]
    return "train/" + key


def flatten(m: dict, prefix: str = "") -> dict[str, float]:
    """Nested numbers as 'a/b/c' -> value (strings and lists are left out)."""
    out = {}
    for k, v in m.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def scalars(m: dict) -> dict[str, float]:
    """One metrics line as the trackers' scalars (without the step itself)."""
    return {group(k): v for k, v in flatten(m).items() if k != "step"}


def sample_rows(samples: list[dict]) -> list[list]:
    """Rows of the samples table: step, prompt, rollout, reward, rubric (JSON)."""
    rows = []
    for s in samples:
        rub = json.dumps(s.get("rubric")) if s.get("rubric") is not None else ""
        for text, reward in zip(s.get("rollouts", []), s.get("rewards", [])):
            rows.append([s.get("step"), str(s.get("prompt")), text, float(reward), rub])
    return rows


COLUMNS = ["step", "prompt", "rollout", "reward", "rubric"]


def open_trackers(names: list[str], *, out: Path, config: dict, name: str, resume_step: int = 0) -> list:
    """The trackers asked for, started: TensorBoard writes its event files into out/tensorboard,
    wandb and trackio take their own modes from the environment (WANDB_MODE=offline, WANDB_DIR,
    TRACKIO_DIR) and record `config` (the run's settings, secrets already redacted)."""
    trackers = []
    for n in check_backends(names):
        if n == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
            w = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)
            w.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```")
            trackers.append(("tensorboard", w))
        elif n == "wandb":
            import wandb
            trackers.append(("wandb", wandb.init(project="ropd", name=name, config=config, dir=str(out),
                                                 resume="allow", id=_run_id(out, "wandb"))))
        else:
            import trackio
            trackers.append(("trackio", trackio.init(project="ropd", name=name, config=config, resume="allow")))
    return trackers


def _run_id(out: Path, backend: str) -> str:
    """One id per run folder (kept there), so that --resume continues the same tracked run."""
    path = out / f".{backend}_id"
    if not path.exists():
        import uuid
        path.write_text(uuid.uuid4().hex[:12])
    return path.read_text().strip()


def log_step(trackers: list, m: dict, samples: list[dict]):
    """One step's metrics (and its logged samples, if any) to every tracker."""
    step, values, rows = m["step"], scalars(m), sample_rows(samples)
    for kind, t in trackers:
        if kind == "tensorboard":
            for k, v in values.items():
                t.add_scalar(k, v, step)
            if rows:
                t.add_text("samples", _markdown(rows), step)
            t.flush()
        else:  # wandb and trackio: the same log(dict, step) and Table(columns, data)
            table = importlib.import_module(kind).Table
            t.log({**values, **({"samples": table(columns=COLUMNS, data=rows)} if rows else {})}, step=step)


def _markdown(rows: list[list]) -> str:
    cell = lambda x: str(x).replace("|", "\\|").replace("\n", " ")[:300]  # noqa: E731
    return "\n".join(["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
                     + ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows])


def close_trackers(trackers: list):
    for kind, t in trackers:
        if kind == "tensorboard":
            t.close()
        else:
            t.finish()
