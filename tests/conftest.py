"""Shared pytest fixtures: where the repo and the shared TinyStories/model files are, and run.c built.

Tiers: `python -m pytest -q -m "not slow" tests` (make test-quick) runs in under a minute and touches
every module; tests marked `slow` spawn training runs, compile, or build run.c's other kernel families.
The README's test command (-m "not ci") is everything but the CI tier, `ci`: the checks that need tools
the README's set-up does not install (llama.cpp, qemu, a browser, sanitizers) and sweeps over every
shared story whose few-story versions run in the other tiers. .ci/run runs both; make test-ci the CI
tier alone."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # flat scripts, no package: make `import model` work from tests/
SHARED = Path(os.environ.get("STORYLLAMA_SHARED", REPO.parent / "shared" / "data"))
# The two run.c builds the C tests use: the portable one (plain kernels) and the vector + threads one.
# make sanitize names its two sanitizer builds here, so that every C test runs under ASan + UBSan.
PLAIN_BUILD, VECTOR_BUILD = os.environ.get("STORYLLAMA_BUILDS", "runplain run").split()
SANITIZED = "sanitize" in PLAIN_BUILD + VECTOR_BUILD  # slower: time limits are relaxed
# The tests' models are tiny: a second thread buys nothing and, beside a busy core, makes every op
# wait at torch's barriers. (Commands the tests start pick their own threads.)
torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: the slow tier (training runs, sanitizer/qemu builds, compile, "
                            "llama.cpp); make test-quick leaves these out")
    config.addinivalue_line("markers", "ci: the CI tier (llama.cpp, qemu, browser, sanitizer checks and sweeps "
                            "over every story), left out of the README's test command; .ci/run runs it")


BUILT = {}  # make target -> its path, so that each run.c build is made (or found up to date) once a session


def build(*targets):
    """make each target once per session; its path (a list of paths for several)."""
    todo = [t for t in targets if t not in BUILT]
    if todo:
        r = subprocess.run(["make", "-C", str(REPO), *todo], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "warning" not in r.stderr.lower(), r.stderr
        BUILT.update((t, REPO / t) for t in todo)
    return BUILT[targets[0]] if len(targets) == 1 else [BUILT[t] for t in targets]


@pytest.fixture(scope="session")
def shared():
    """Path to ../shared/data, or skip when this checkout has none beside it."""
    if not (SHARED / "models").is_dir():
        pytest.skip(f"shared data not found at {SHARED} (set STORYLLAMA_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def repo():
    return REPO


@pytest.fixture(scope="session")
def run_bin():
    """./run (or, under make sanitize, its sanitizer build), built once per session."""
    return build(VECTOR_BUILD)
