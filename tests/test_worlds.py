"""The toy worlds (README, "Worlds"): each teacher's corpus, the judge that checks references, a
build that is the same on every run, names that change with the recipe, and the default world
the README's figures were measured on."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

import prompts
import rubric
import ropd
import teacher as teacher_lib
import toy

ROOT = Path(__file__).resolve().parent.parent
# 3*9=27 then 27+5: the imperfect teacher drops the carry adding to a two-digit number
CARRY = toy.Problem("(3*9)+5", ((3, "*", 9, 27), (27, "+", 5, 32)), 32)


def test_no_carry_addition_by_hand():
    assert [toy.no_carry_add(a, b) for a, b in ((27, 5), (27, 15), (99, 9), (7, 5), (3, 4), (-3, 5), (40, 9))] == \
        [22, 32, 98, 12, 7, 2, 49]


def test_each_teacher_corpus_writes_its_own_solutions():
    assert CARRY.written("worked") == "3*9=27\n27+5=32\nAnswer: 32"
    assert CARRY.written("bare") == "Answer: 32"
    assert CARRY.written("words") == "3 times 9 is 27\n27 plus 5 is 32\nAnswer: 32"
    assert CARRY.written("no-carry") == "3*9=27\n27+5=22\nAnswer: 22"  # consistent, and wrong
    with pytest.raises(ValueError, match="unknown solution style"):
        CARRY.written("sloppy")
    ps = toy.make_problems(2000, 0)
    wrong = sum(toy.answer_line(p.written("no-carry")) != p.answer for p in ps) / len(ps)
    assert 0.08 < wrong < 0.17  # "about 1 problem in 8", as the README says
    assert all(p.written("no-carry") == p.solution for p in ps if all(
        op != "+" or a < 10 or (a % 10) + b < 10 for a, op, b, _ in p.steps))  # no carry dropped: right


def criteria(question, references, students=("Answer: 1",)):
    got = toy._toy_rubric(question, list(references), list(students))
    return [(c["points"], c["criterion"]) for c in got["rubrics"]]


def test_the_toy_judge_checks_references_before_it_uses_them():
    right = [CARRY.solution] * 4
    wrong = [CARRY.written("no-carry")] * 4
    bare = [CARRY.written("bare")] * 4
    with_steps = criteria(CARRY.question, right)
    assert [c for _, c in with_steps if "contains the line" in c] == [
        "The response contains the line `3*9=27` (step 1 worked out correctly).",
        "The response contains the line `27+5=32` (step 2 worked out correctly)."]
    words = [CARRY.written("words")] * 4
    for refs in (wrong, bare, words):  # nothing that checks out to sharpen against: no method asked for
        got = criteria(CARRY.question, refs)
        assert not any("contains the line" in c for _, c in got)
        assert (5, "The final line of the response is exactly `Answer: 32`.") in got  # the true answer
        assert len(got) >= rubric.MIN_CRITERIA
    # with one right reference among wrong ones, its steps are used
    assert criteria(CARRY.question, wrong[:3] + right[:1]) == with_steps


def test_a_method_neutral_rubric_scores_answers_by_what_is_right():
    crits = [{"criterion": c, "points": p} for p, c in criteria(CARRY.question, [CARRY.written("bare")] * 4)]
    total = sum(c["points"] for c in crits)
    score = lambda text: toy._judge(crits, text)[1] / total  # noqa: E731
    assert score("Answer: 32") == score("3*9=27\n27+5=32\nAnswer: 32") == 1.0  # either way, right is right
    assert score("3*9=27\n27+5=22\nAnswer: 22") == 2 / 9  # a wrong step and a wrong answer
    assert score("Answer: 22") == 4 / 9
    assert score("Answer: 32\nAnswer: 32") == 8 / 9


def test_the_rubric_for_unworked_references_passes_the_real_prompt_path():
    """The toy judge's reply to the real rubricator prompt parses with the run's defaults."""
    chat = prompts.rubricator_messages(CARRY.question, ["Answer: 32"] * 4, ["Answer: 31", "Answer: 32"])
    parsed = rubric.parse_rubric(toy.toy_judge(chat))
    assert [c.points for c in parsed.criteria] == [5, 1, 2, 1] and parsed.maximum_score == 9


def test_another_vocabulary_for_the_same_text(tmp_path):
    ours, theirs = toy.build_tokenizer(), toy.build_tokenizer(merges=True)
    text = "(3*9)+5\n3*9=27\n27+5=32\nAnswer: 32"
    a, b = ours(text, add_special_tokens=False)["input_ids"], theirs(text, add_special_tokens=False)["input_ids"]
    assert len(a) == len(text) and len(b) == len(text) - 4 - 5  # 27, 27, 32, 32 and "Answer": one token each
    assert theirs.decode(b) == text and theirs.convert_ids_to_tokens(b)[-4:] == ["Answer", ":", "Ġ", "32"]
    assert not set(ours.get_vocab().items()) & set(theirs.get_vocab().items())  # not one (token, id) shared
    model = toy.build_model(theirs, hidden=16, layers=1, heads=2, seed=0, arch="llama")
    model.save_pretrained(tmp_path)
    theirs.save_pretrained(tmp_path)
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.model_type == "llama"
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text, add_special_tokens=False)["input_ids"] == b


def build_in_subprocess(root: Path, *flags) -> dict:
    """`python toy.py` in a fresh process, as a newcomer runs it; the world's description."""
    out = root / "world.json"
    subprocess.run([sys.executable, "toy.py", "--root", str(root / "w"), "--json", str(out), *flags], cwd=ROOT,
                   check=True, capture_output=True, env={**os.environ, "ROPD_CACHE": str(root / "cache")})
    return json.loads(out.read_text())


def test_two_fresh_builds_are_the_same_world(tmp_path):
    """Two processes, two cache roots: the same weights, bit for bit (pinned CPU numerics)."""
    a, b = (build_in_subprocess(tmp_path / x, "--test-size", "--rebuild") for x in "ab")
    assert a["fingerprints"] == b["fingerprints"] and set(a["fingerprints"]) == {"teacher", "student"}
    assert a["cpu_capability"] == b["cpu_capability"]


def test_a_changed_recipe_is_a_new_world(tmp_path):
    """The world's name hashes its config and the build's code: a changed line in grpo.py (which
    the build trains through) names a new world, so a stale cache is never taken for it."""
    def key(folder):
        return subprocess.run([sys.executable, "-c", "import toy; print(toy.WORLDS['default'].key(), "
                               "toy.WORLDS['default'].part_key('student'))"], cwd=folder, check=True,
                              capture_output=True, text=True).stdout.split()
    for name in ("toy.py", "grpo.py", "answers.py", "prompts.py"):
        shutil.copy(ROOT / name, tmp_path / name)
    before = key(tmp_path)
    assert before == key(ROOT)
    (tmp_path / "grpo.py").write_text((tmp_path / "grpo.py").read_text() + "\n# one more line\n")
    after = key(tmp_path)
    assert after[0] != before[0] and after[1] != before[1]
    changed = dataclasses.replace(toy.ToyConfig(), student_sft={**toy.ToyConfig().student_sft, "steps": 601})
    assert changed.key() != toy.ToyConfig().key() and changed.part_key("teacher") == toy.ToyConfig().part_key("teacher")
    assert len({c.key() for c in toy.WORLDS.values()}) == len(toy.WORLDS)
    assert len({c.part_key("student") for c in toy.WORLDS.values()}) == 1  # one student, built once


def test_the_default_world_is_the_one_shipped_and_measured(tmp_path):
    """A fresh build of the default world, in a fresh process, has the shipped weights bit for bit
    (worlds/default, what `python ropd.py` loads), and results/ (the README's figures) was measured
    on that world."""
    shipped = json.loads((toy.SHIPPED / "default" / "world.json").read_text())
    recorded = json.loads((ROOT / "results" / "default" / "world.json").read_text())
    assert recorded["fingerprints"] == shipped["fingerprints"]
    assert shipped["fingerprints"] == {role: toy.weights_fingerprint(toy.SHIPPED / "default" / role)
                                       for role in ("teacher", "student")}  # the files are what it says
    built = build_in_subprocess(tmp_path, "--world", "default", "--rebuild")
    assert built["build_seconds"] > 5  # trained here, not copied from the shipped folder
    assert built["cpu_capability"] == shipped["cpu_capability"] == "AVX2"
    assert built["fingerprints"] == shipped["fingerprints"]
    assert (built["teacher_accuracy"], built["student_accuracy"]) == \
        (shipped["teacher_accuracy"], shipped["student_accuracy"])


def test_a_fresh_clone_loads_the_shipped_world_and_shares_its_student(tmp_path):
    """With an empty cache, the default world is the shipped folder (nothing built); another world
    with the same student recipe copies the shipped student instead of training it again."""
    assert not any(toy.cache_dir().glob("*/world.json"))
    world = toy.load_world("default", log=None)
    assert world.root == toy.SHIPPED / "default" and world.fingerprints["student"]
    part = toy._part(toy.WORLDS["mimicry"], "student", tmp_path / "parts", log=None)
    assert toy.weights_fingerprint(part) == world.fingerprints["student"]
    assert json.loads((part / "accuracy.json").read_text())["accuracy"] == world.student_accuracy
    assert toy._shipped(toy.WORLDS["mimicry"]) is None  # its teacher is its own: built, not shipped


@pytest.fixture(scope="module")
def xtok_world(tmp_path_factory):
    """The tiny world with the xtok world's teacher: another vocabulary, Llama's architecture."""
    cfg = dataclasses.replace(toy.TEST_CONFIG, teacher={**toy.TEST_CONFIG.teacher, "arch": "llama"},
                              teacher_vocab="merges")
    return toy.build(cfg, tmp_path_factory.mktemp("xtok") / "w", log=None)


def test_without_a_shared_vocabulary_logit_methods_refuse_and_text_methods_run(xtok_world, tmp_path, capsys):
    from tests.test_ropd import tiny_args
    assert AutoModelForCausalLM.from_pretrained(xtok_world.teacher_path).config.model_type == "llama"
    capsys.readouterr()  # (the loading bar above)
    for method in ("lopd", "exopd"):
        assert ropd.main(tiny_args(xtok_world, tmp_path, method=method, out=method)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "does not share the student's tokenizer (no shared vocabulary" in err[0]
    for method in ("ropd", "tjudge", "ovd", "sft"):
        assert ropd.main(tiny_args(xtok_world, tmp_path, "--steps", "1", method=method, out=method)) == 0
        lines = [json.loads(x) for x in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
        assert len(lines) == 1 and lines[0]["usage"]  # the teacher was asked, as text


def test_worlds_by_name(tmp_path, capsys):
    assert set(toy.WORLDS) == {"default", "mimicry", "xtok", "imperfect"}
    assert toy.WORLDS["mimicry"].teacher_sft["style"] == "words"
    assert toy.WORLDS["imperfect"].teacher_sft["style"] == "no-carry"
    assert (toy.WORLDS["xtok"].teacher["arch"], toy.WORLDS["xtok"].teacher_vocab) == ("llama", "merges")
    assert teacher_lib.check_spec("toy:mimicry") == ("toy", "mimicry", None)
    with pytest.raises(teacher_lib.TeacherError, match="no toy world at nowhere"):
        teacher_lib.check_spec("toy:nowhere")
    assert ropd.main(["--world", "mimicri", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --world mimicri: no toy world there (a world's name is one of default, mimicry")
    with pytest.raises(ValueError, match="unknown toy world"):
        toy.world_config("mimicri")
