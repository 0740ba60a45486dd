"""The files an index is derived from are declared inputs: editing one annotation file reruns
exactly that benchmark's preparation (and, through the index, its evaluations); editing the
instruction json reruns its check. Run for real on a tiny mini world through Snakemake."""

import json
import os
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def snakemake(workdir: Path, config: Path, *args: str) -> str:
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
         "--configfile", str(config), "--cores", "1", *args],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    return run.stdout + run.stderr


def planned(output: str) -> dict[str, int]:
    """rule -> job count from a dry run's job stats."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", output, re.MULTILINE)
            if m.group(1) != "total"}


@pytest.mark.slow
def test_editing_an_annotation_file_reruns_exactly_its_preparation(tmp_path):
    study = yaml.safe_load((ROOT / "config" / "mini.yaml").read_text())
    study["study"] = "tiny"
    study["mini"].update(n_train=12, n_eval=6, n_classify=12, image_size=32)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(study, sort_keys=False))
    prepared = [f"resources/tiny/prepared/{name}.json" for name in ("vqa-v2", "refcoco", "instruct")]

    snakemake(tmp_path, config, *prepared)
    assert "Nothing to be done" in snakemake(tmp_path, config, "-n", *prepared)

    time.sleep(1.1)  # a newer modification time than the index
    annotations = tmp_path / "resources/tiny/world/vqa-v2/v2_mscoco_val2014_annotations.json"
    annotations.write_text(json.dumps(json.loads(annotations.read_text()), indent=1))  # an edit (Snakemake
    # compares checksums: rewriting identical bytes is not one)
    assert planned(snakemake(tmp_path, config, "-n", *prepared)) == {"prepare_benchmark": 1}
    assert "prepare-benchmark" in snakemake(tmp_path, config, "-n", "-p", prepared[0])
    snakemake(tmp_path, config, *prepared)

    refs = tmp_path / "resources/tiny/world/refcoco/refcoco/refs(unc).p"
    refs.write_bytes(pickle.dumps(pickle.loads(refs.read_bytes()), protocol=4))
    instruct = tmp_path / "resources/tiny/world/llava/llava_v1_5_mix665k.json"
    instruct.write_text(json.dumps(json.loads(instruct.read_text()), indent=1))
    assert planned(snakemake(tmp_path, config, "-n", *prepared)) == {"prepare_benchmark": 1, "prepare_instruct": 1}


def test_hand_placed_paper_files_are_inputs_of_their_preparation(tmp_path):
    from tests.workflow.test_dryrun import PAPER, dry_run

    placed = tmp_path / "resources" / "paper" / "data" / "ocid-ref" / "val_expressions.json"
    placed.parent.mkdir(parents=True)
    placed.write_text("{}")
    jobs = dry_run(PAPER, targets=["resources/paper/prepared/ocid-ref.json", "resources/paper/prepared/vqa-v2.json"],
                   workdir=tmp_path)
    inputs = {job.wildcards["benchmark"]: [str(f) for f in job.input] for job in jobs
              if job.rule.name == "prepare_benchmark"}
    assert "resources/paper/data/ocid-ref/val_expressions.json" in inputs["ocid-ref"]
    # a fetched benchmark's files are not a rule's declared outputs: it depends on its fetch record
    assert inputs["vqa-v2"] == ["resources/paper/data/vqa-v2.fetched.json"]
