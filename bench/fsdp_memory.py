"""Per-GPU memory of one FSDP2 training step (dist.py) for a real architecture built from its config
(random weights: nothing is downloaded), against the training-state estimate of docs/scale.md
(16 bytes per parameter over W ranks: fp32 weights, gradients, AdamW's two moments).

    torchrun --nproc_per_node 1 bench/fsdp_memory.py --device cuda        # Qwen3-0.6B's shape, one GPU
    torchrun --nproc_per_node 8 bench/fsdp_memory.py --device cuda --config qwen3-4b
    torchrun --nproc_per_node 2 bench/fsdp_memory.py --config tiny        # CPU (gloo), a small shape

Prints one row of the table: config, parameters, ranks W, device, batch, the estimate, the largest
and the smallest measured peak over the ranks.

The step is ropd.py's: the student sharded by dist.shard, its log-probs by the sharded forward
(grpo.token_logprobs inside it), a token-mean policy loss on random advantages, backward, AdamW.
Peak: torch.cuda.max_memory_allocated on each GPU (bf16 compute under autocast, fp32 master
weights); on a CPU, the RSS high-water mark of each process (Python and torch included).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import dist  # noqa: E402
import grpo  # noqa: E402

# the shapes of public configs (transformers' Qwen3 architecture), and one for a CPU
CONFIGS = {
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True),
    "qwen3-1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True),
    "qwen3-4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=32, vocab_size=1000, tie_word_embeddings=True),
}


def setup(device: torch.device) -> dist.World:
    """torchrun's process group even for one process (dist.setup skips it there), so that one GPU
    runs the FSDP2 path too."""
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        device = torch.device("cuda", torch.cuda.current_device())
    return dist.World(rank, size, device)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="qwen3-0.6b", choices=CONFIGS)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=4, help="sequences per rank")
    ap.add_argument("--length", type=int, default=1024, help="tokens per sequence (half prompt, half completion)")
    a = ap.parse_args(argv)
    from transformers import AutoModelForCausalLM, Qwen3Config

    world = setup(torch.device(a.device))
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(Qwen3Config(**CONFIGS[a.config]), dtype=torch.float32).to(world.device)
    n_params = sum(p.numel() for p in lm.parameters())
    model = dist.shard(lm, world)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    if world.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ids = torch.randint(0, CONFIGS[a.config]["vocab_size"], (a.batch, a.length), device=world.device)
    attn, T = torch.ones_like(ids), a.length // 2
    for _ in range(2):  # the second step has AdamW's moments: the steady state
        with grpo.autocast(world.device):
            logp = grpo.policy_logprobs(model, ids, attn, T).float()
        loss, _ = grpo.policy_loss(logp, logp.detach(), torch.randn(a.batch, device=world.device), attn[:, -T:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    peak = (torch.cuda.max_memory_allocated() if world.device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
    peaks = [peak] if world.size == 1 else dist.gather(peak, world)
    if world.main:
        state = 16 * n_params / world.size / 2**20
        print("| config | parameters | W | device | batch x length | estimate (16 B/param / W) | peak, largest rank "
              "| peak, smallest rank |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
        print(f"| {a.config} | {n_params / 1e6:,.1f} M | {world.size} | {a.device} | {a.batch} x {a.length} | "
              f"{state:,.0f} MB | {max(peaks):,.0f} MB | {min(peaks):,.0f} MB |")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
