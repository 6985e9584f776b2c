"""toy.py: the task, the tokenizer, the cached world, and a few real GRPO steps on it."""

import json
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import answers
import grpo
import toy


def test_problems_are_reproducible_and_correct():
    a, b = toy.make_problems(50, seed=1), toy.make_problems(50, seed=1)
    assert a == b and a != toy.make_problems(50, seed=2)
    for p in a:
        assert 2 <= len(p.steps) <= 3
        value = p.steps[0][0]
        for x, op, y, r in p.steps:  # each step starts from the previous result
            assert x == value and r == {"+": x + y, "-": x - y, "*": x * y}[op] and 0 <= r <= 99
            value = r
        assert p.answer == value
        assert toy.parse_question(p.question) == list(p.steps)
        assert answers.is_correct(p.solution, str(p.answer))


def test_heldout_split_is_disjoint_from_training():
    train = {p.question for p in toy.make_problems(3000, seed=0, split="train")}
    test = {p.question for p in toy.make_problems(300, seed=0, split="test")}
    assert train and test and not train & test
    assert all(toy.is_heldout(q) for q in test)


def test_question_and_solution_format():
    p = toy.Problem("((7+5)*3)-4", ((7, "+", 5, 12), (12, "*", 3, 36), (36, "-", 4, 32)), 32)
    assert p.solution == "7+5=12\n12*3=36\n36-4=32\nAnswer: 32"
    assert toy.parse_question("((7+5)*3)-4") == list(p.steps)
    assert toy.parse_question("what is 2+2?") is None


@pytest.mark.parametrize("text,answer", [
    ("7+5=12\nAnswer: 12", 12),
    ("7+5=12\nAnswer: 12\n", 12),
    ("Answer:12", 12),
    ("Answer: 12\nmore text", None),     # the toy judge reads the last line only
    ("12", None),                        # no answer line
    ("", None),
    ("Answer: -3", -3),
])
def test_toy_judge_reads_the_answer_line(text, answer):
    assert toy.answer_line(text) == answer


def test_tokenizer_is_character_level_and_round_trips(tmp_path):
    tok = toy.build_tokenizer()
    text = "((7+5)*3)-4\n7+5=12\nAnswer: 32"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.decode(ids) == text
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    chat = [{"role": "user", "content": "1+2"}]
    rendered = again.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert rendered == "<|user|>1+2<|end|><|assistant|>"
    assert again.eos_token == "<|end|>" and again.pad_token == "<pad>"


def test_world_is_cached_and_loadable(tiny_world):
    w = tiny_world
    stamp = {p: p.stat().st_mtime_ns for p in w.root.rglob("*")}
    again = toy.build(toy.TEST_CONFIG, w.root, log=None)
    assert again.teacher_accuracy == w.teacher_accuracy
    assert {p: p.stat().st_mtime_ns for p in w.root.rglob("*")} == stamp  # loaded, not built again
    for path in (w.teacher_path, w.student_path):
        model = AutoModelForCausalLM.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        assert model.config.model_type == "qwen2" and tok.eos_token_id == model.config.eos_token_id
        # loaded from a model folder, transformers picks Qwen2's tokenizer class: it must still
        # encode exactly as the tokenizer the models were trained with (spaces and newlines kept)
        text = "7+5=12\n12*3=36\nAnswer: 36"
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == toy.build_tokenizer()(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text) and tok.decode(ids) == text
    teacher = AutoModelForCausalLM.from_pretrained(w.teacher_path)
    student = AutoModelForCausalLM.from_pretrained(w.student_path)
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters())
    assert len(w.problems("test")) == toy.TEST_CONFIG.n_test


def test_sft_lowers_the_loss():
    tok = toy.build_tokenizer()
    model = toy.build_model(tok, hidden=32, layers=1, heads=2, seed=0)
    losses = toy.sft(model, tok, toy.make_problems(200, 0), steps=40, batch=16, lr=3e-3, seed=0, log=None)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_shortcut_corpus_changes_the_texts_not_the_batches(monkeypatch):
    """sft(shortcut=f): a fraction f of the solutions lose their steps; the problems drawn are the
    same as without shortcuts (the coin has its own random stream)."""
    seen = {}
    real = toy.grpo.encode_completions

    def spy(tok, texts, *a, **k):
        seen.setdefault("texts", []).extend(texts)
        return real(tok, texts, *a, **k)
    monkeypatch.setattr(toy.grpo, "encode_completions", spy)
    tok = toy.build_tokenizer()
    probs = toy.make_problems(100, 0)
    runs = {}
    for f in (0.0, 0.6):
        seen.clear()
        toy.sft(toy.build_model(tok, hidden=16, layers=1, heads=2, seed=0), tok, probs, steps=10,
                batch=20, lr=1e-3, seed=3, shortcut=f, log=None)
        runs[f] = seen["texts"]
    by_answer = {p.solution: p for p in probs}
    assert all(t in by_answer for t in runs[0.0])
    short = [a for a, b in zip(runs[0.6], runs[0.0]) if a != b]
    assert all(a == by_answer[b].shortcut_solution for a, b in zip(runs[0.6], runs[0.0]) if a != b)
    assert 0.45 < len(short) / len(runs[0.0]) < 0.75


def test_a_few_grpo_steps_with_the_checker_as_reward(tiny_world):
    """The whole loss path on CPU: rollouts -> checker reward -> group advantages -> clipped loss.
    The update must raise the log-prob of the rollouts with positive advantage and lower the others."""
    w = tiny_world
    tok = AutoTokenizer.from_pretrained(w.student_path)
    model = AutoModelForCausalLM.from_pretrained(w.student_path)
    # the checker decides the reward; a small bonus per line keeps the tiny (untrained) student's
    # groups from being all-zero, so that the advantages are not trivially zero
    problems = w.problems("train", n=4, seed=5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(3):
        r = grpo.sample(model, tok, [p.question for p in problems], n=6, max_new_tokens=40, seed=step)
        rewards = torch.tensor([
            float(answers.is_correct(t, str(problems[g].answer))) + 0.1 * len(t.splitlines())
            for t, g in zip(r.texts, r.prompt_index)])
        adv = grpo.group_advantages(rewards, 6)
        T = r.completion_ids.shape[1]
        with torch.no_grad():
            old = grpo.token_logprobs(model, r.input_ids, r.attention_mask, T)
        new = grpo.token_logprobs(model, r.input_ids, r.attention_mask, T)
        loss, stats = grpo.policy_loss(new, old, adv, r.completion_mask, clip_c=3.0)
        assert stats["ratio_mean"] == pytest.approx(1.0, abs=1e-5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            after = grpo.token_logprobs(model, r.input_ids, r.attention_mask, T)
        seq_delta = ((after - old) * r.completion_mask).sum(1)
        if (adv > 0).any() and (adv < 0).any():
            assert seq_delta[adv > 0].mean() > seq_delta[adv < 0].mean()
        assert torch.isfinite(loss)


def test_toy_cli_builds_a_world_with_wider_student_heads(tmp_path, capsys):
    """python toy.py --student-heads 2: the student vLLM's CPU attention can run (heads 32 wide)."""
    toy.main(["--test-size", "--student-heads", "1", "--root", str(tmp_path / "w")])
    info = json.loads((tmp_path / "w" / "world.json").read_text())
    assert info["config"]["student"] == {**toy.TEST_CONFIG.student, "heads": 1}
    cfg = json.loads((tmp_path / "w" / "student" / "config.json").read_text())
    assert cfg["hidden_size"] // cfg["num_attention_heads"] == 32
