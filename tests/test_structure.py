"""The shape a reader relies on: imports run one way, the paper's steps are short named
functions, arguments travel by name, `grpo` needs torch alone, and the README's "Paper -> code"
table names functions that exist."""
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = {p.stem: p for p in ROOT.glob("*.py") if p.stem != "conftest"}


def _tree(name):
    return ast.parse(MODULES[name].read_text())


def _project_imports(node) -> set[str]:
    names = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            names |= {a.name.split(".")[0] for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            names.add(n.module.split(".")[0])
    return names & set(MODULES)


def import_graph() -> dict[str, set[str]]:
    return {name: _project_imports(_tree(name)) - {name} for name in MODULES}


def find_cycle(graph) -> list[str] | None:
    """A cycle in the graph as a path [a, b, ..., a], or None (depth-first search, three colours)."""
    colour, stack = {n: 0 for n in graph}, []

    def visit(n):
        colour[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if colour[m] == 1:
                return stack[stack.index(m):] + [m]
            if colour[m] == 0 and (found := visit(m)):
                return found
        stack.pop()
        colour[n] = 2
        return None

    for n in sorted(graph):
        if colour[n] == 0 and (found := visit(n)):
            return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_imports_run_one_way():
    assert find_cycle(import_graph()) is None
    # the core knows nothing of the command lines above it
    graph = import_graph()
    assert graph["grpo"] == set() and graph["prompts"] == set() and graph["answers"] == set()
    assert graph["rubric"] == {"prompts"}
    assert "ropd" not in graph["eval"] and "eval" in graph["ropd"]


def test_no_project_import_inside_a_function():
    for name in MODULES:
        for fn in ast.walk(_tree(name)):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = _project_imports(ast.Module(body=fn.body, type_ignores=[]))
                assert not inner, f"{name}.{fn.name} imports {inner} inside the function"


def _functions(name) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in ast.walk(_tree(name)) if isinstance(n, ast.FunctionDef)}


STEPS = {"ropd": ["sample_rollouts", "old_logprobs", "get_references", "judged_reward", "outcome_reward",
                  "lopd_reward", "exopd_reward", "apply_failure_policy", "compute_advantages", "sft_step"],
         "rubric": ["induce_rubrics", "verify_blindly", "weighted_pass_rates", "ropd_reward", "holistic_reward",
                    "tjudge_reward", "ovd_reward", "score", "blind_pool"],
         "prompts": ["rubricator_messages", "verifier_messages", "single_verifier_messages", "tjudge_messages",
                     "ovd_messages"],
         "grpo": ["sample", "token_logprobs", "group_advantages", "lopd_advantages", "exopd_advantages", "policy_loss",
                  "update_policy"],
         "teacher": ["references"]}


@pytest.mark.parametrize("module,name", [(m, f) for m, fs in STEPS.items() for f in fs])
def test_each_paper_step_is_a_short_function_that_cites_the_paper(module, name):
    fn = _functions(module)[name]
    assert fn.end_lineno - fn.lineno + 1 <= 40
    doc = ast.get_docstring(fn) or ""
    assert re.search(r"§\d|Eqs?\. ?\d|Alg\. 1|App\. [A-F]|Table \d|official code", doc), \
        f"{module}.{name} cites no part of the paper (or says it is the official code's)"


def test_train_reads_like_algorithm_1():
    fn = _functions("ropd")["train"]
    assert fn.end_lineno - fn.lineno + 1 <= 70
    called = {n.func.id if isinstance(n.func, ast.Name) else n.func.attr
              for n in ast.walk(fn) if isinstance(n, ast.Call)}
    assert {"sample_rollouts", "get_references", "apply_failure_policy", "compute_advantages",
            "update_policy"} <= called


def test_nothing_cites_a_file_the_repository_lacks():
    for p in list(MODULES.values()) + [ROOT / "README.md"]:
        assert "PAPER.md" not in p.read_text() and "PROMPTS.md" not in p.read_text(), p.name


def test_readme_paper_to_code_table_names_functions_that_exist():
    """Each `file.py:function` (or `file.py:Class`) in the "Paper -> code" table is a top-level name of
    that module; the table names functions, never line numbers, so no edit renumbers it."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Paper → code")
    table = readme[start:readme.index("\n## ", start + 1)]
    cells = re.findall(r"`(\w+)\.py:(\w+)`", table)
    assert len(cells) >= 15
    assert not re.search(r"`\w+\.py:\w+` \(\d+", table), "the table cites line numbers"
    for module, name in cells:
        top = {n.name for n in _tree(module).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert name in top, f"README names {module}.py:{name}, which does not exist"


# ---------------------------------------------------------------- how arguments travel

SOURCES = sorted([p for p in ROOT.glob("*.py") if p.stem != "conftest"] + list(ROOT.glob("bench/*.py")))
MAX_POSITIONAL_ARGS = 5     # at a call site: more, and a reader counts positions to know which is which
MAX_POSITIONAL_PARAMS = 8   # in a signature, besides self/cls/ctx: the rest are keyword-only (after `*`)


def argument_style_violations(source: str, where: str = "") -> list[str]:
    """Calls with more than MAX_POSITIONAL_ARGS positional arguments, and functions with more than
    MAX_POSITIONAL_PARAMS parameters that can be passed by position."""
    found = []
    for n in ast.walk(ast.parse(source)):
        if isinstance(n, ast.Call) and len(n.args) > MAX_POSITIONAL_ARGS:
            found.append(f"{where}:{n.lineno} {ast.unparse(n.func)}(...) passes {len(n.args)} arguments by position")
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            params = [a.arg for a in n.args.posonlyargs + n.args.args if a.arg not in ("self", "cls", "ctx")]
            if len(params) > MAX_POSITIONAL_PARAMS:
                found.append(f"{where}:{n.lineno} {n.name} takes {len(params)} parameters by position")
    return found


def test_argument_style_check_catches_both_kinds():
    assert len(argument_style_violations("f(1, 2, 3, 4, 5, 6)\nf(1, 2, 3, 4, 5, x=6)")) == 1
    assert len(argument_style_violations("def f(a, b, c, d, e, f, g, h, i): pass")) == 1
    assert not argument_style_violations("def f(self, a, b, c, d, e, f, g, h, *, i): pass")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_arguments_travel_by_name(path):
    """No call passes more than 5 arguments by position, no signature takes more than 8 by position
    (the rest are keyword-only): a swapped pair of floats cannot go unnoticed (issue 23)."""
    assert argument_style_violations(path.read_text(), str(path.relative_to(ROOT))) == []


def test_grpo_imports_with_torch_alone(tmp_path):
    """The loss, the advantages and the log-probs copy with torch alone: transformers is imported
    only where the sampler uses it."""
    blocker = tmp_path / "transformers.py"
    blocker.write_text("raise ImportError('transformers is not installed here')\n")
    code = ("import grpo, torch\n"
            "loss, _ = grpo.policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), grpo.group_advantages("
            "torch.tensor([0.0, 1.0]), 2), torch.ones(2, 3))\n"
            "print(float(loss))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) == 0.0


def test_readme_signatures_are_the_real_ones():
    """Each `module.function(...)` call written in the README's "The pieces to copy" binds to the
    function's real signature: the same positional count, every keyword a real parameter."""
    import importlib
    import inspect

    readme = (ROOT / "README.md").read_text()
    start = readme.index("### The pieces to copy")
    section = readme[start:readme.index("\n## ", start)]
    calls = [c for c in re.findall(r"`([a-z_]+\.[A-Za-z_]+\(.*?\))`", section) if c.split(".")[0] in MODULES]
    assert len(calls) >= 5
    for text in calls:
        call = ast.parse(text, mode="eval").body
        module, name = ast.unparse(call.func).split(".")
        fn = getattr(importlib.import_module(module), name)
        try:
            inspect.signature(fn).bind(*[None] * len(call.args), **{k.arg: None for k in call.keywords})
        except TypeError as e:
            raise AssertionError(f"README: {text} does not match {module}.{name}{inspect.signature(fn)}: {e}")
