"""Run under torchrun by tests/test_distributed.py: the gradient of one mini-batch, computed by
grpo.update_policy's share logic on every rank under FSDP2, saved whole by rank 0.

    torchrun --nproc_per_node=N tests/dist_gradient.py WORLD_DIR AGG OUT.pt
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dist  # noqa: E402
import grpo  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402


def batch(world_dir: str) -> grpo.Batch:
    """A fixed mini-batch of 4 groups x 2 rollouts, with advantages and perturbed old log-probs."""
    tok = AutoTokenizer.from_pretrained(f"{world_dir}/student")
    model = AutoModelForCausalLM.from_pretrained(f"{world_dir}/student")
    prompts = ["1+2", "((3*4)-5)+6", "(9-1)*2", "7-3"]
    ro = grpo.sample(model, tok, prompts, n=2, max_new_tokens=12, row_seeds=list(range(8)))
    old = grpo.batched_logprobs(model, ro.input_ids, ro.attention_mask, ro.completion_mask, temperature=1.0,
                                micro_batch=0, device=torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    old = old + 0.3 * torch.randn(old.shape, generator=g) * ro.completion_mask  # some ratios get clipped
    return grpo.Batch(input_ids=ro.input_ids, attention_mask=ro.attention_mask, completion_mask=ro.completion_mask,
                      old_logp=old, advantages=torch.randn(8, generator=g))


def main(world_dir: str, agg: str, out: str):
    world = dist.setup(torch.device("cpu"))
    b = batch(world_dir)
    lm = AutoModelForCausalLM.from_pretrained(f"{world_dir}/student")
    model = dist.shard(lm, world) if world.size > 1 else lm
    # one mini-batch of the 4 groups, no clipping, an SGD step at lr 0: the gradient stays in .grad
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    st = grpo.update_policy(model, opt, b, group_size=2, seed=0, loss=grpo.LossConfig(agg=agg, max_len=12),
                            update=grpo.UpdateConfig(mini_batches=1, grad_clip=float("inf")), device=world.device,
                            rank=world.rank, world_size=world.size,
                            sum_stats=lambda stats: dist.sum_stats(stats, world))
    grads = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
             for n, p in dist.unwrap(model).named_parameters()}
    if world.main:
        torch.save({"grads": grads, "stats": st}, out)
    dist.close(world)


if __name__ == "__main__":
    main(*sys.argv[1:])
