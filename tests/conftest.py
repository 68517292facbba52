"""Shared pytest fixtures: where the repo and the shared TinyStories/model files are, and run.c built."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # flat scripts, no package: make `import model` work from tests/
SHARED = Path(os.environ.get("STORYLLAMA_SHARED", REPO.parent / "shared" / "data"))
# The two run.c builds the C tests use: the portable one (plain kernels) and the vector + threads one.
# make sanitize names its two sanitizer builds here, so that every C test runs under ASan + UBSan.
PLAIN_BUILD, VECTOR_BUILD = os.environ.get("STORYLLAMA_BUILDS", "runplain run").split()
SANITIZED = "sanitize" in PLAIN_BUILD + VECTOR_BUILD  # slower: time limits are relaxed


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
    r = subprocess.run(["make", "-C", str(REPO), VECTOR_BUILD], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return REPO / VECTOR_BUILD
