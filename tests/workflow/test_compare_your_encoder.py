"""The README's "Compare your own encoder" snippet, added to a copy of config/experiments.yaml as the
README says, validates (the encoder built on the meta device at its tap) and dry-runs: the one command
trains and evaluates the new cell and writes Tables 1 and 2 with it. No network, no weights."""

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.workflow.test_dryrun import PAPER, ROOT, dry_run

README = ROOT / "README.md"
SECTION = "## Compare your own encoder"


def readme_section() -> str:
    text = README.read_text()
    assert SECTION in text
    return text.split(SECTION, 1)[1].split("\n## ", 1)[0]


def snippet() -> dict:
    (block,) = re.findall(r"```yaml\n(.*?)```", readme_section(), flags=re.S)
    return yaml.safe_load(block)


def with_snippet(study: dict, added: dict) -> dict:
    """The README's instructions: backbones under `backbones:`, cells at the end of `cells:`, each
    table's cell ids at the end of that table's `cells:`."""
    study["backbones"].update(added["backbones"])
    study["cells"].extend(added["cells"])
    for table, spec in added["tables"].items():
        study["tables"][table]["cells"].extend(spec["cells"])
    return study


@pytest.fixture(scope="module")
def mine(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mine") / "config" / "mine.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(with_snippet(yaml.safe_load(PAPER.read_text()), snippet()), sort_keys=False))
    return path


def vlmswap(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlmswap.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_the_snippet_adds_one_cell_to_tables_1_and_2():
    added = snippet()
    (cell,) = added["cells"]
    cell_id = "@".join(str(cell[k]) for k in ("backbone", "objective", "geometry", "tap", "connector"))
    assert set(added["tables"]) == {"table-1", "table-2"}
    assert all(spec["cells"] == [cell_id] for spec in added["tables"].values())
    paper = yaml.safe_load(PAPER.read_text())
    assert cell["objective"] == "in1k" and cell["geometry"] == "224"  # the matched IN1K/224 setting
    assert added["backbones"][cell["backbone"]]["family"] in ("timm", "hf")
    assert cell["backbone"] not in paper["backbones"]


def test_the_snippet_validates_with_its_token_count(mine):
    done = vlmswap("validate", "--config", str(mine))
    assert done.returncode == 0, done.stderr
    assert "convnext-t@in1k@224@index2@mlp2: 196 visual tokens" in done.stdout
    assert "is valid: 106 cells" in done.stdout  # 99 + this one + 6 stage-ablation cells


def test_the_readme_command_trains_evaluates_and_tabulates_the_new_cell(mine):
    targets = ["results/paper/tables/table-1.md", "results/paper/tables/table-2.md"]
    # targets before --configfile, which takes every word after it as a config file
    assert (f"snakemake {' '.join(targets)} --profile slurm --configfile config/mine.yaml"
            in readme_section())
    jobs = dry_run(mine, targets=targets, workdir=mine.parents[1])
    counts = Counter(job.rule.name for job in jobs)
    assert counts["table"] == 2
    new = [j for j in jobs if j.wildcards.get("cell") == "convnext-t@in1k@224@index2@mlp2"]
    # Table 1 shows VQA columns, Table 2 localization ones (and the overall average): both groups
    assert Counter(j.rule.name for j in new) == {"train": 1, "evaluate_vqa": 1, "evaluate_loc": 1}
    fetch = [j for j in jobs if j.rule.name == "fetch_backbone" and j.wildcards.get("backbone") == "convnext-t"]
    assert len(fetch) == 1 and counts["train"] == 16  # the 15 paper rows of Tables 1/2 and the new one


def test_a_tap_the_model_lacks_fails_validation_with_what_it_has(mine, tmp_path):
    study = yaml.safe_load(mine.read_text())
    study["cells"][-1]["tap"] = "index5"
    for table in ("table-1", "table-2"):
        study["tables"][table]["cells"][-1] = "convnext-t@in1k@224@index5@mlp2"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(study, sort_keys=False))
    done = vlmswap("validate", "--config", str(bad))
    assert done.returncode == 2
    assert f"{bad}: cells[99]: convnext-t@in1k@224@index5@mlp2: timm model 'convnext_tiny.fb_in1k' has no " \
           "intermediate 5" in done.stderr
    assert "index2: 196 tokens x 384" in done.stderr
