"""The shape a reader relies on: imports run one way, the paper's steps are short named
functions, and the README's "Paper -> code" table points at the lines that implement each step."""
import ast
import re
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


def test_readme_paper_to_code_table_points_at_the_functions():
    """Each `file.py:function` cell with a line range names exactly that function's lines."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Paper → code"):]
    cells = re.findall(r"`(\w+)\.py:(\w+)` \((\d+)-(\d+)\)", table)
    assert len(cells) >= 15
    for module, name, start, end in cells:
        fn = {n.name: n for n in ast.walk(_tree(module)) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}[name]
        assert (fn.lineno, fn.end_lineno) == (int(start), int(end)), f"{module}.py:{name} is at {fn.lineno}-{fn.end_lineno}"
