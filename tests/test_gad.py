"""gad.py: the GAD baseline's discriminator (Ye et al., arXiv 2511.10643) on the toy model."""
import math

import pytest
import torch

import gad
import toy


def test_bradley_terry_is_minus_log_sigmoid_of_the_margin_over_all_pairs():
    dt, ds = torch.tensor([1.0, 0.0]), torch.tensor([0.5, -1.0, 2.0])
    by_hand = -sum(math.log(1 / (1 + math.exp(-(t - s)))) for t in (1.0, 0.0) for s in (0.5, -1.0, 2.0)) / 6
    assert gad.bradley_terry(dt, ds).item() == pytest.approx(by_hand)


@pytest.fixture(scope="module")
def tiny():
    tok = toy.build_tokenizer()
    return toy.build_model(tok, hidden=32, layers=2, heads=2, seed=0), tok


def test_discriminator_starts_neutral_is_a_copy_and_learns_to_prefer_the_teacher(tiny, tmp_path):
    model, tok = tiny
    before = [p.detach().clone() for p in model.parameters()]
    d = gad.GAD(model, tok, lr=3e-3, max_tokens=64)
    probs = toy.make_problems(4, seed=1)
    chats = [[{"role": "user", "content": p.question}] for p in probs]
    refs = [[p.solution] for p in probs]  # the teacher shows its steps
    outs = [[f"Answer: {p.answer + 1}", f"Answer: {p.answer + 2}"] for p in probs]  # the student does not
    flat = lambda xs: [x for g in xs for x in g]  # noqa: E731
    start = d.scores([c for c, g in zip(chats, outs) for _ in g], flat(outs))
    assert torch.equal(start, torch.zeros(8))  # a zero head: no preference before training
    first = d.update(chats, refs, outs)
    assert first["gad_loss"] == pytest.approx(math.log(2))  # -log sigmoid(0)
    for _ in range(15):
        last = d.update(chats, refs, outs)
    assert last["gad_loss"] < 0.3 and last["gad_teacher_wins"] == 1.0
    t = d.scores(chats, flat(refs))
    s = d.scores([c for c, g in zip(chats, outs) for _ in g], flat(outs))
    assert t.min() > s.max()  # every teacher answer above every rollout
    # the student itself was not touched (the discriminator is a copy)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    d.save(tmp_path)
    e = gad.GAD(model, tok, lr=3e-3, max_tokens=64)
    e.load(tmp_path)
    assert torch.allclose(e.scores(chats, flat(refs)), t)


def test_update_skips_prompts_without_references(tiny):
    model, tok = tiny
    d = gad.GAD(model, tok, lr=1e-3, max_tokens=32)
    assert d.update([[{"role": "user", "content": "1+1"}]], [[]], [["Answer: 2"]]) == {}
