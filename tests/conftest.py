"""Shared fixtures: toy worlds built once per test session (seconds, not the full build).

With ROPD_REQUIRE_EXTRAS=1 (set by .ci/run, where every optional extra is installed) a skipped
test is a failure: a test that silently skips tests nothing."""
import os

import pytest

import serve
import teacher
import toy

STRICT = os.environ.get("ROPD_REQUIRE_EXTRAS") == "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: installs and starts a real server (vLLM); "
                                       "minutes the first time; deselect with -m 'not integration'")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped where ROPD_REQUIRE_EXTRAS=1 (every extra is installed): {report.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped:  # a module skipped whole (importorskip at its top)
        report.outcome = "failed"
        report.longrepr = f"skipped where ROPD_REQUIRE_EXTRAS=1 (every extra is installed): {report.longrepr}"


@pytest.fixture(scope="session")
def _cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("ropd-cache")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch, _cache_root):
    """No test depends on what the working tree or the user's cache holds: each runs in a folder of
    its own (a `runs/ropd` left by `python ropd.py` is not seen), with a cache root of the session's."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ROPD_CACHE", str(_cache_root))


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A world whose models are barely trained: fast, but its student writes garbage (rewards 0)."""
    return toy.build(toy.TEST_CONFIG, tmp_path_factory.mktemp("world") / "w", log=None)


SMALL = toy.ToyConfig(steps=(2,), max_operand=3, max_value=20, n_train=3000, n_test=64,
                      teacher=dict(hidden=64, layers=2, heads=4),
                      teacher_sft=dict(steps=500, batch=64, lr=3e-3),
                      student=dict(hidden=64, layers=2, heads=4),
                      student_sft=dict(steps=200, batch=64, lr=3e-3))


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """A world whose teacher is accurate (about 97%) and whose student is right about half the time
    (about 48%), so that rewards vary within groups: 2-step problems, operands 1-3; ~30 s."""
    return toy.build(SMALL, tmp_path_factory.mktemp("small") / "w", log=None)


@pytest.fixture
def judge_server(tiny_world):
    """The toy world's teacher and judge behind a real local HTTP server (faults injectable)."""
    srv = serve.TeacherServer(teacher.load(f"toy:{tiny_world.root}", cache=None), model_name="m").start()
    yield srv
    srv.stop()
