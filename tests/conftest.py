"""Shared test setup: the --run-slow switch for the end-to-end runs, CPU-only environment."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a hub


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run the tests marked slow (end-to-end Snakemake runs); CI passes it")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow end-to-end test: run with --run-slow (CI does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


PAPER_DIR = Path(__file__).resolve().parents[2] / "shared" / "paper"


def require_paper() -> Path:
    """The paper's CSVs (../shared/paper beside the repository). Missing on a laptop clone: the
    test is skipped; missing in CI (CI=true): the test fails, since CI always has them."""
    if (PAPER_DIR / "paper_results.csv").is_file():
        return PAPER_DIR
    message = f"the paper's CSVs are not at {PAPER_DIR} (the shared folder next to the repository)"
    if os.environ.get("CI") == "true":
        pytest.fail(message + "; CI must provide them")
    pytest.skip(message)
