"""Run by tests/test_vllm_sampler.py in the vLLM environment: a colocated engine (sampler.py) beside
the toy student, sampling at T = 0.7. Saves, for the test to compare, the engine's log-prob of every
sampled token beside the policy's own (grpo.token_logprobs) at four moments:
  loaded   the engine as loaded from the student's folder, after a weight load
  stale    after three optimizer steps on the policy, the engine NOT reloaded
  synced   after those steps, the engine reloaded (load_policy_weights)
  rerun    the same seeds again: the same rollouts

    python tests/vllm_logprobs.py WORLD OUT.pt
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import data  # noqa: E402
import grpo  # noqa: E402
import sampler  # noqa: E402

T = 0.7
PROMPTS = ["1+2", "(3*2)-1", "((2+3)*2)-4", "3*3"]


def main(world: str, out: str):
    student = Path(world) / "student"
    engine = sampler.start_engine(str(student), device=torch.device("cpu"), cpu_kv_cache_gb=1)
    model, tok = data.load_model(str(student), torch.device("cpu"))
    seeds = list(range(100, 100 + 3 * len(PROMPTS)))

    def draw():
        ro = sampler.sample(engine, tok, PROMPTS, n=3, max_new_tokens=24, temperature=T, row_seeds=seeds,
                            eos=grpo.eos_ids(tok, model))
        with torch.no_grad():
            policy = grpo.token_logprobs(model, ro.input_ids, ro.attention_mask, ro.completion_ids.shape[1],
                                         temperature=T) * ro.completion_mask
        return {"sampler": ro.sampler_logp, "policy": policy, "mask": ro.completion_mask, "ids": ro.completion_ids}

    saved = {}
    sampler.load_policy_weights(engine, model)
    saved["loaded"] = first = draw()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    prompt_ids, prompt_mask = grpo.rollout_prompts(tok, PROMPTS, n=3)
    ids, attn = torch.cat([prompt_ids, first["ids"]], 1), torch.cat([prompt_mask, first["mask"]], 1)
    for _ in range(3):  # make the first rollouts likelier: the policy moves away from the engine
        lp = grpo.token_logprobs(model, ids, attn, first["ids"].shape[1], temperature=T)
        (-(lp * first["mask"]).sum() / first["mask"].sum()).backward()
        opt.step()
        opt.zero_grad()
    saved["stale"] = draw()
    sampler.load_policy_weights(engine, model)
    saved["synced"] = draw()
    saved["rerun"] = draw()
    sampler.shutdown(engine)
    torch.save(saved, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
