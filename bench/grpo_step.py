"""GRPO step throughput: ropd.py's loop against TRL's GRPOTrainer, in one run on one machine.

    python bench/grpo_step.py                       # CPU: 8 prompts x 8 rollouts x 128 tokens
    python bench/grpo_step.py --device cuda --hidden 1024 --layers 8 --length 512

Identical for both: the model (a randomly initialised Qwen2 with the toy tokenizer, saved once
and loaded by each), the prompts, 8 prompts x G = 8 rollouts per step, up to --length new
tokens at temperature 1.0 / top-p 1.0 / no top-k, outcome reward (answers.is_correct against the
answers; a random model earns 0, which changes nothing in the work done), 4 mini-batches per
step (TRL: steps_per_generation = 4, so it also computes the old log-probs once), clip
0.2 / 0.28, token-mean loss over the mini-batch (TRL: loss_type "dapo"), no KL, no reward
scaling, AdamW lr 1e-6, grad-norm clip 1.0, fp32, no gradient checkpointing (TRL's default is
on; it is switched off here, as ours is by default).
A "step" is one generation round and its 4 optimizer updates. The first --warmup steps are not
counted. A random model rarely emits EOS, so nearly every rollout runs to --length; each side's
mean completion length is printed, to compare like with like.
Needs `pip install trl==1.16.0` (benchmark only).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import answers  # noqa: E402
import ropd  # noqa: E402
import toy  # noqa: E402


def make_model(root: Path, hidden: int, layers: int, max_positions: int = 4096) -> Path:
    """A randomly initialised Qwen2 with the toy tokenizer (heads of 64), saved in root/model."""
    tok = toy.build_tokenizer()
    model = toy.build_model(tok, hidden=hidden, layers=layers, heads=max(1, hidden // 64), seed=0,
                            max_positions=max_positions)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return root / "model"


def run_ropd(model_path: Path, data: Path, a, root: Path) -> list[dict]:
    ropd.train(ropd.parse_args([
        "--method", "grpo", "--student", str(model_path), "--data", str(data), "--out", str(root / "ropd"),
        "--steps", str(a.warmup + a.steps), "--prompts-per-step", str(a.prompts), "--rollouts", str(a.group),
        "--mini-batches", "4", "--max-new-tokens", str(a.length), "--lr", "1e-6", "--save-every", "100000",
        "--eval-every", "0", "--log-samples", "0", "--device", a.device, "--seed", "0"]), log=lambda *x: None)
    ms = [json.loads(x) for x in (root / "ropd" / "metrics.jsonl").read_text().splitlines()]
    return [{"seconds": m["seconds"]["total"], "length": m["completion_len_mean"],
             "phases": m["seconds"]} for m in ms[a.warmup:]]


def run_trl(model_path: Path, rows: list[dict], a, root: Path) -> list[dict]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    gold = {r["prompt"]: r["answer"] for r in rows}
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}]} for r in rows])

    def reward(prompts, completions, **kw):
        return [float(answers.is_correct(c[0]["content"], gold[p[-1]["content"]]))
                for p, c in zip(prompts, completions)]

    times: list[float] = []
    lengths: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    batch = a.prompts * a.group
    cfg = GRPOConfig(
        output_dir=str(root / "trl"), per_device_train_batch_size=batch // 4, steps_per_generation=4,
        gradient_accumulation_steps=1, num_generations=a.group, max_completion_length=a.length,
        max_steps=4 * (a.warmup + a.steps), learning_rate=1e-6, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.01, max_grad_norm=1.0, beta=0.0, epsilon=0.2, epsilon_high=0.28, loss_type="dapo",
        scale_rewards="none", num_iterations=1, temperature=1.0, top_p=1.0, top_k=0, logging_steps=1,
        report_to=[], save_strategy="no", use_cpu=a.device == "cpu", bf16=False, seed=0,
        dataloader_num_workers=0, disable_dropout=True, shuffle_dataset=False,
        gradient_checkpointing=False)  # TRL's default is True; ours is off unless --grad-checkpointing
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=ds, processing_class=tok,
                          callbacks=[Timer()])
    trainer.train()
    rounds = [sum(times[i:i + 4]) for i in range(0, len(times), 4)]  # 4 updates = one generation round
    mean_len = sum(lengths) / len(lengths) if lengths else float("nan")  # logged once per round
    return [{"seconds": t, "length": mean_len} for t in rounds][a.warmup:]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-grpo-"))
    model_path = make_model(root, a.hidden, a.layers)
    n = a.prompts * (a.warmup + a.steps)
    rows = [p.to_json() for p in toy.make_problems(n, seed=0)]
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ours = run_ropd(model_path, data, a, root)
    theirs = run_trl(model_path, rows, a, root)

    def mean(xs):
        return sum(xs) / len(xs)
    o, t = mean([x["seconds"] for x in ours]), mean([x["seconds"] for x in theirs])
    print(f"model: Qwen2 hidden {a.hidden}, {a.layers} layers, toy vocabulary; {a.prompts} prompts x "
          f"{a.group} rollouts x up to {a.length} tokens, 4 mini-batches, device {a.device}; "
          f"{a.steps} timed steps after {a.warmup} warm-up")
    print(f"ropd.py  {o:7.2f} s/step   mean completion length {mean([x['length'] for x in ours]):.1f}")
    print(f"TRL      {t:7.2f} s/step   mean completion length {mean([x['length'] for x in theirs]):.1f}")
    lo, lt = mean([x["length"] for x in ours]), mean([x["length"] for x in theirs])
    print(f"TRL / ropd.py = {t / o:.2f}x per step, {(t / lt) / (o / lo):.2f}x per generated token")
    phases = {k: mean([x["phases"][k] for x in ours]) for k in ours[0]["phases"] if k != "total"}
    print("ropd.py seconds per phase: " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()))


if __name__ == "__main__":
    main()
