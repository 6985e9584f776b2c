"""Shared fixtures: a tiny toy world built once per test session (seconds, not the full build)."""
import pytest

import toy


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: installs and starts a real server (vLLM); "
                                       "minutes the first time; deselect with -m 'not integration'")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    return toy.build(toy.TEST_CONFIG, tmp_path_factory.mktemp("world") / "w", log=None)
