"""bench/lora.py - LoRA (--lora-rank) beside full fine-tuning: what it saves, measured on the toy
world and computed for the paper's students.

    python bench/lora.py                    # toy world: 10 ROPD steps each way, one run each
    python bench/lora.py --steps 20 --rank 16

Prints, per way: trainable parameters, the training state in bytes (fp32 weights 4 B/param; each
trainable parameter adds its fp32 gradient and AdamW's two fp32 moments, 12 B), the process's peak
resident memory and the mean seconds per step (metrics.jsonl). Then the same state arithmetic for
Qwen3-1.7B / 4B / 8B with LoRA on every linear layer (their public config sizes), beside full
fine-tuning: the table docs/scale.md quotes.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Qwen3's public configs: hidden, intermediate, layers, attention heads x head dim, KV heads, vocabulary
QWEN3 = {"Qwen3-1.7B": (2048, 6144, 28, 16 * 128, 8 * 128, 151936),
         "Qwen3-4B": (2560, 9728, 36, 32 * 128, 8 * 128, 151936),
         "Qwen3-8B": (4096, 12288, 36, 32 * 128, 8 * 128, 151936)}
RUN = """import json, resource, runpy, sys
sys.argv = ["ropd.py"] + json.loads(sys.argv[1])
try:
    runpy.run_path("ropd.py", run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
print("MAXRSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def params(rank: int) -> tuple[int, int]:
    """The toy student's (all parameters, trainable ones) at this LoRA rank (0: full)."""
    sys.path.insert(0, str(ROOT))
    import toy
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(toy.load_world(None, log=None).student_path)
    total = sum(p.numel() for p in model.parameters())
    if not rank:
        return total, total
    import peft
    model = peft.get_peft_model(model, peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear"))
    return sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.parameters() if p.requires_grad)


def state_gb(total: int, trainable: int) -> float:
    return (4 * total + 12 * trainable) / 1e9


def qwen3_lora(rank: int, hidden: int, inter: int, layers: int, q: int, kv: int) -> int:
    """LoRA parameters on q, k, v, o, gate, up, down of every layer: r x (in + out) each."""
    shapes = [(hidden, q), (hidden, kv), (hidden, kv), (q, hidden), (hidden, inter), (hidden, inter), (inter, hidden)]
    return layers * sum(rank * (a + b) for a, b in shapes)


def qwen3_params(hidden: int, inter: int, layers: int, q: int, kv: int, vocab: int) -> int:
    per_layer = hidden * (q + 2 * kv) + q * hidden + 3 * hidden * inter
    return layers * per_layer + vocab * hidden * (1 if hidden < 4096 else 2)  # 1.7B / 4B tie the head


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rank", type=int, default=8)
    a = ap.parse_args()
    print(f"toy world, ROPD, {a.steps} steps, one run each (CPU, 2 threads)")
    print(f"{'way':<14} {'params':>9} {'trainable':>10} {'state MB':>9} {'peak RSS MB':>12} {'s/step':>7}")
    for rank in (0, a.rank):
        with tempfile.TemporaryDirectory() as tmp:
            flags = ["--steps", str(a.steps), "--eval-every", "0", "--eval-samples", "20", "--out", f"{tmp}/run",
                     "--save-every", str(a.steps)] + (["--lora-rank", str(rank), "--lr", "1e-3"] if rank else [])
            out = subprocess.run([sys.executable, "-c", RUN, json.dumps(flags)], cwd=ROOT, capture_output=True,
                                 text=True, check=True).stdout
            rss = int(out.split("MAXRSS")[1].split()[0]) / 1024
            lines = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
            secs = sum(m["seconds"]["total"] for m in lines) / len(lines)
        total, trainable = params(rank)
        way = f"LoRA r={rank}" if rank else "full"
        print(f"{way:<14} {total:>9,} {trainable:>10,} {state_gb(total, trainable) * 1e3:>9.2f} {rss:>12.0f} {secs:>7.2f}")
    print(f"\ntraining state (GB; fp32 weights, + gradients and AdamW moments of what trains), LoRA r={a.rank} "
          f"on every linear layer, one process:")
    print(f"{'student':<12} {'params':>8} {'full':>7} {'LoRA':>7} {'LoRA params':>12}")
    for name, cfg in QWEN3.items():
        total, lora = qwen3_params(*cfg), qwen3_lora(a.rank, *cfg[:5])
        print(f"{name:<12} {total / 1e9:>7.2f}B {state_gb(total, total):>7.1f} {state_gb(total + lora, lora):>7.1f} "
              f"{lora / 1e6:>11.1f}M")
    return 0


if __name__ == "__main__":
    sys.exit(main())
