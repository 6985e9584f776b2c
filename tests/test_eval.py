"""eval.py: AUC by hand, the benchmark CLI and the paper's two analyses end to end."""
import json
import math
import sys

import numpy as np
import pytest
import torch

import answers
import eval as ev
import prompts
import ropd
import serve
import teacher
import toy


def test_roc_auc_hand_examples_with_ties():
    assert ev.roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # pos 2 vs negs {1, 2}: 1 + 1/2; pos 3 vs both: 2  ->  3.5 / 4
    assert ev.roc_auc([1, 2, 2, 3], [0, 0, 1, 1]) == pytest.approx(0.875)
    assert ev.roc_auc([0.5] * 4, [0, 1, 0, 1]) == pytest.approx(0.5)
    assert ev.roc_auc([3, 2, 1], [1, 0, 0]) == 1.0
    assert ev.roc_auc([3, 2, 1], [0, 1, 1]) == 0.0
    assert math.isnan(ev.roc_auc([1, 2], [1, 1]))


def test_roc_auc_equals_pairwise_definition():
    import random
    rng = random.Random(0)
    s = [rng.choice([0.0, 0.25, 0.5, 1.0]) for _ in range(40)]  # many ties
    y = [rng.random() < 0.4 for _ in range(40)]
    pos = [a for a, b in zip(s, y) if b]
    neg = [a for a, b in zip(s, y) if not b]
    pairwise = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))
    assert ev.roc_auc(s, y) == pytest.approx(pairwise)


def test_group_auc_skips_single_class_groups():
    # group 1: perfect (1.0); group 2: all wrong (skipped); group 3: reversed (0.0)
    s = [0.9, 0.1, 0.5, 0.4, 0.1, 0.9]
    y = [1, 0, 0, 0, 1, 0]
    assert ev.group_auc(s, y, 2) == pytest.approx(0.5)


def test_benchmark_cli_on_the_tiny_world(tiny_world, tmp_path):
    out = tmp_path / "res.json"
    assert ev.main(["--model", "toy-teacher", "--world", str(tiny_world.root), "--limit", "6",
                    "--samples", "4", "--max-new-tokens", "12", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["problems_n"] == 6 and res["samples"] == 4
    # the report is consistent with its own per-problem counts
    assert res["avg@4"] == pytest.approx(sum(p["correct"] for p in res["problems"]) / 24)
    for p in res["problems"]:
        assert p["pass@k"]["4"] == (1.0 if p["correct"] else 0.0)
        assert p["pass@k"]["1"] == pytest.approx(p["correct"] / 4)


def test_benchmark_rejects_rows_without_answers(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "2+2"}\n')
    assert ev.main(["--model", "nowhere", "--data", str(data)]) == 2
    assert "needs an 'answer'" in capsys.readouterr().err


def test_toy_teacher_is_accurate_end_to_end(small_world, tmp_path):
    """`python eval.py --model toy-teacher --data toy` at the paper's sampling settings."""
    out = tmp_path / "teacher.json"
    assert ev.main(["--model", "toy-teacher", "--world", str(small_world.root), "--samples", "4",
                    "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["problems_n"] == 64 and res["temperature"] == 1.0 and res["top_p"] == 0.95
    assert res["avg@4"] >= 0.9
    assert res["pass@k"]["4"] >= res["avg@4"]


def test_signal_analysis_on_the_small_world(small_world, tmp_path):
    out = tmp_path / "signal.json"
    assert ev.main(["signal", "--model", "toy", "--teacher", f"toy:{small_world.root}",
                    "--world", str(small_world.root), "--prompts", "8", "--rollouts", "6",
                    "--references", "2", "--cache", str(tmp_path / "c.sqlite"), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    # a group whose 2 teacher references are both unusable falls back (rare; the references' seeds
    # follow the world's path): the rubric AUC is then over the other groups
    assert res["rollouts"] == 48 and res["fallback_groups"] <= 2
    assert set(res["signals"]) == {"rubric score", "teacher log-prob", "teacher-student log-ratio", "top-24 overlap"}
    rows = [r for r in res["rollouts_detail"] if not r["fallback"]]
    assert len(rows) == 48 - 6 * res["fallback_groups"]
    right = [r for r in rows if r["correct"]]
    wrong = [r for r in rows if not r["correct"]]
    assert right and wrong
    # recomputed from the per-rollout detail, independently of the report
    auc = ev.roc_auc([r["rubric score"] for r in rows], [r["correct"] for r in rows])
    assert res["signals"]["rubric score"]["auc"] == pytest.approx(auc)
    # the toy rubric gives 5 of its points to the right final line: it separates right from wrong
    # (not perfectly: a right answer without its steps scores below a wrong one that shows them)
    assert auc > 0.8
    for name in res["signals"]:  # the AUC and Bad-upd. of every signal, recomputed from the detail
        keep = rows if name == "rubric score" else res["rollouts_detail"]
        assert res["signals"][name]["auc"] == pytest.approx(
            ev.roc_auc([r[name] for r in keep], [r["correct"] for r in keep]), nan_ok=True)
        assert res["signals"][name]["bad_update_rate"] == pytest.approx(
            ev.bad_update_rate([r[name] for r in keep], [r["correct"] for r in keep], 6), nan_ok=True)
    assert all(0.0 <= r["top-24 overlap"] <= 1.0 for r in res["rollouts_detail"])


def test_phase_analysis_over_a_run(tiny_world, tmp_path):
    from tests.test_ropd import tiny_args
    assert ropd.main(tiny_args(tiny_world, tmp_path, method="grpo")) == 0
    out = tmp_path / "phase.json"
    assert ev.main(["phase", "--run", str(tmp_path / "run"), "--teacher", f"toy:{tiny_world.root}",
                    "--world", str(tiny_world.root), "--limit", "4", "--samples", "2",
                    "--max-new-tokens", "12", "--out", str(out)]) == 0
    pts = json.loads(out.read_text())["checkpoints"]
    assert [p["step"] for p in pts] == [0, 1, 2]
    for p in pts:
        assert 0.0 <= p["accuracy"] <= 1.0
        assert p["teacher_logprob"] < 0 and p["student_logprob"] < 0
        assert 0.0 <= p["rubric_reward"] <= 1.0  # Table A5: one fixed rubric per prompt, one verifier
    # with the initial student as its own teacher, step 0's similarity is its own log-prob exactly
    assert ev.main(["phase", "--run", str(tmp_path / "run"), "--teacher", f"hf:{tiny_world.student_path}",
                    "--world", str(tiny_world.root), "--limit", "4", "--samples", "2",
                    "--max-new-tokens", "12", "--out", str(out)]) == 0
    same = json.loads(out.read_text())["checkpoints"]
    assert same[0]["teacher_logprob"] == pytest.approx(same[0]["student_logprob"], abs=1e-5)
    assert [p["accuracy"] for p in same] == [p["accuracy"] for p in pts]  # the samples are seeded


# a chat template that thinks unless told otherwise, as Qwen3's does
QWEN3_STYLE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}")


@pytest.fixture
def qwen3_style_model(tiny_world, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_world.student_path)
    tok.chat_template = QWEN3_STYLE
    path = tmp_path / "qwen3-style"
    AutoModelForCausalLM.from_pretrained(tiny_world.student_path).save_pretrained(path)
    tok.save_pretrained(path)
    return path, tok


def test_thinking_is_off_by_default_and_on_with_the_flag(qwen3_style_model, tiny_world, tmp_path):
    path, tok = qwen3_style_model
    import grpo
    off, _ = grpo.encode_prompts(tok, ["1+2"], {"enable_thinking": False})
    on, _ = grpo.encode_prompts(tok, ["1+2"], {"enable_thinking": True})
    assert tok.decode(off[0]).endswith("<|assistant|><think>\n\n</think>\n\n")
    assert tok.decode(on[0]).endswith("<|assistant|>")
    runs = {}
    for name, flags in (("default", []), ("thinking", ["--enable-thinking"])):
        out = tmp_path / f"{name}.json"
        assert ev.main(["--model", str(path), "--world", str(tiny_world.root), "--limit", "2", "--samples", "1",
                        "--temperature", "0", "--max-new-tokens", "4", "--out", str(out), *flags]) == 0
        runs[name] = json.loads(out.read_text())
    assert runs["default"]["enable_thinking"] is False and runs["thinking"]["enable_thinking"] is True
    think_block = len(tok("<think>\n\n</think>\n\n", add_special_tokens=False)["input_ids"])
    for a, b in zip(runs["default"]["problems"], runs["thinking"]["problems"]):
        assert a["prompt_tokens"] == b["prompt_tokens"] + think_block


def test_benchmark_reports_bootstrap_intervals(small_world, tmp_path):
    out = tmp_path / "res.json"
    assert ev.main(["--model", "toy", "--world", str(small_world.root), "--limit", "8",
                    "--samples", "4", "--max-new-tokens", "24", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    right = np.array([p["right"] for p in res["problems"]])
    assert right.shape == (8, 4) and right.sum() == sum(p["correct"] for p in res["problems"])
    # the fixture must make the intervals mean something: some right, some wrong, within a problem too
    assert 0 < right.sum() < right.size and ((right.sum(1) > 0) & (right.sum(1) < 4)).any()
    for name, k in (("avg@4", None), ("pass@2", 2)):
        score = res["avg@4"] if k is None else res["pass@k"]["2"]
        for over in ("problems", "samples"):
            lo, hi = res["ci95"][name][over]
            assert (lo, hi) == answers.bootstrap_ci(right, k, over, 1000, seed=0)
            assert lo <= score + 1e-9 and score <= hi + 1e-9 and hi - lo > 0


def test_math_verify_checker_missing_is_one_line(tiny_world, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)  # as if it were not installed
    assert ev.main(["--model", "toy-teacher", "--world", str(tiny_world.root), "--checker", "math-verify",
                    "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --checker math-verify needs the math-verify package (pip install math-verify)"]


def test_bad_update_rate_by_hand():
    # group 1 (mixed): right 0.9, 0.2; wrong 0.5, 0.4 -> mean 0.5: right 0.2 is below (bad), wrong 0.5 is
    # at the mean (not above: fine), wrong 0.4 below (fine), right 0.9 above (fine): 1 bad of 4
    # group 2: all right -> skipped; group 3 (mixed): right 0.1, wrong 0.9 -> both bad
    scores = [0.9, 0.2, 0.5, 0.4, 1, 1, 1, 1, 0.1, 0.9, 0.5, 0.5]
    labels = [1, 1, 0, 0, 1, 1, 1, 1, 1, 0, 1, 0]
    # group 3: mean 0.5: right 0.1 below (bad), wrong 0.9 above (bad), right 0.5 / wrong 0.5 at the mean
    assert ev.bad_update_rate(scores, labels, 4) == pytest.approx((1 + 2) / 8)
    assert math.isnan(ev.bad_update_rate([1, 2], [1, 1], 2))


def test_topk_hits_against_a_full_sort():
    tok = toy.build_tokenizer()
    model = toy.build_model(tok, hidden=32, layers=1, heads=2, seed=3).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, len(tok), (3, 9), generator=g)
    attn = torch.ones_like(ids)
    hits = ev.topk_hits(model, ids, attn, 4, k=5, batch=2)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn).logits
    for i in range(3):
        for t in range(4):
            pos = 9 - 4 + t
            rank = int((logits[i, pos - 1] > logits[i, pos - 1, ids[i, pos]]).sum())  # how many beat it
            assert hits[i, t].item() == float(rank < 5), (i, t)


def test_cell_transitions_and_logged_categories_by_hand():
    before = {("p", "c1"): True, ("p", "c2"): False, ("q", "c1"): False, ("q", "c9"): True}
    after = {("p", "c1"): False, ("p", "c2"): True, ("q", "c1"): False, ("r", "c1"): True}
    assert ev.cell_transitions(before, after) == {"fail->pass": 1, "pass->fail": 1, "pass->pass": 0, "fail->fail": 1}
    rub = {"rubrics": [{"criterion_id": "c1", "category": "A", "criterion": "x", "points": 5},
                       {"criterion_id": "c2", "category": "B", "criterion": "y", "points": 1},
                       {"criterion_id": "c3", "category": "A", "criterion": "z", "points": 2}]}
    samples = [{"step": 1, "rubric": rub, "judgements": [[True, False, False], [True, True, True]]},
               {"step": 1, "rubric": rub, "judgements": [[False, False, True], None]},
               {"step": 2, "rubric": None, "judgements": None}]
    # step 1, A: (T,F) (T,T) (F,T) -> 4 of 6; B: F, T, F -> 1 of 3
    assert ev.logged_categories(samples) == {1: {"A": 4 / 6, "B": 1 / 3}}


def test_categories_over_a_run(tiny_world, tmp_path):
    from tests.test_ropd import tiny_args
    assert ropd.main(tiny_args(tiny_world, tmp_path)) == 0
    run = tmp_path / "run"
    out = tmp_path / "categories.json"
    assert ev.main(["categories", "--run", str(run), "--world", str(tiny_world.root), "--samples", "2",
                    "--prompts", "3", "--max-new-tokens", "12", "--cache", str(tmp_path / "c.sqlite"),
                    "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    pts = res["checkpoints"]
    assert [p["step"] for p in pts] == [0, 1, 2] and res["prompts"] == 3
    for p in pts:
        assert set(p["pass_rates"]) <= set(prompts.CATEGORIES) and p["pass_rates"]
        assert all(0.0 <= v <= 1.0 for v in p["pass_rates"].values())
    logged = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    rubrics = {}
    for s in logged:  # each prompt's first logged rubric, in the log's order
        rubrics.setdefault(json.dumps(s["prompt"]), s["rubric"])
    n_cells = sum(len(r["rubrics"]) for r in list(rubrics.values())[:3])
    for p in pts[1:]:  # every (prompt, criterion) cell is counted once per pair of checkpoints
        assert sum(p["transitions"].values()) == n_cells
    assert res["logged"] == {str(k): v for k, v in ev.logged_categories(logged).items()}


class CriterionJudge(teacher.Teacher):
    """A grader behind a real local server: a criterion is met when its text says 'met'."""
    kind = "scripted"

    def _request(self, chat, *, n, temperature, max_tokens, options, timeout=None):
        criterion = chat[-1]["content"].split("<criterion>")[-1]
        met = "[met]" in criterion
        return [json.dumps({"explanation": "scripted", "criteria_met": met})] * n, 10, 5


def test_healthbench_cli_scores_each_row_against_its_own_rubric(tiny_world, tmp_path):
    rows = [{"prompt": [{"role": "user", "content": "I have a headache."}],
             "rubrics": [{"criterion": "advises rest [met]", "points": 5}, {"criterion": "asks about fever", "points": 3},
                         {"criterion": "recommends a dangerous dose [met]", "points": -4}]},
            {"prompt": [{"role": "user", "content": "Is water wet?"}],
             "rubrics": [{"criterion": "answers plainly [met]", "points": 2}, {"criterion": "cites a source", "points": 2}]}]
    (tmp_path / "hb.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    srv = serve.TeacherServer(CriterionJudge("grader", cache=None), model_name="grader").start()
    try:
        assert ev.main(["healthbench", "--model", "toy", "--world", str(tiny_world.root), "--data",
                        str(tmp_path / "hb.jsonl"), "--judge", f"openai:grader@{srv.url}", "--max-new-tokens", "8",
                        "--cache", str(tmp_path / "c.sqlite"), "--out", str(tmp_path / "hb.json")]) == 0
    finally:
        srv.stop()
    res = json.loads((tmp_path / "hb.json").read_text())
    # by hand: (5 - 4) / 8 positive points; 2 / 4
    assert res["scores"] == pytest.approx([1 / 8, 0.5]) and res["score"] == pytest.approx((1 / 8 + 0.5) / 2)
    assert res["graded"] == res["examples"] == 2
