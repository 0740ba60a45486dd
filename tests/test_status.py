"""`vlmswap status` on a partly finished, partly failed mini study: done, running, failed (from
Snakemake's log, with the job log's last lines, and from a killed run's incomplete markers),
missing and stale, per cell and stage, with totals, as text and as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from snakemake.persistence.file import FilePersistence

from vlmswap.cli import main
from vlmswap.provenance import result_record, sealed
from vlmswap.status import grid_status, read_snakemake_state
from vlmswap.study import load_study

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "mini.yaml"
DONE, FAILED, RUNNING = "vit-mini@cls@64@block-2@mlp2", "vmamba-mini@cls@64@stage3@mlp2", "mambavision-mini@cls@64@stage3@mlp2"
STALE = "vitdet-mini@det@64@last-block@mlp2"


def marker_path(workdir: Path, output: str) -> Path:
    """Where Snakemake itself puts the incomplete marker of `output` (its own encoding)."""
    persistence = FilePersistence.__new__(FilePersistence)
    persistence._max_len = None
    folder = workdir / ".snakemake" / "incomplete"
    folder.mkdir(parents=True, exist_ok=True)
    return Path(persistence._record_path(str(folder), output))


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def trained(workdir: Path, cell: str, model: dict) -> None:
    folder = workdir / "results" / "mini" / "models" / cell
    write(folder / "train.json", json.dumps({"provenance": model, "model_sha256": "a" * 64}))
    write(folder / "model.safetensors", "weights")


def evaluated(workdir: Path, cell: str, benchmark: str, model: dict) -> None:
    pred = sealed({"kind": "predictions", "model": model["fingerprint"], "weights_sha256": "a" * 64})
    write(workdir / "results" / "mini" / "evals" / cell / f"{benchmark}.json",
          json.dumps({"columns": {}, "provenance": result_record(pred, "scorer")}))


@pytest.fixture
def study_dir(tmp_path):
    """DONE: trained and both results current. FAILED: trained, its VQA-v2 evaluation failed (in
    Snakemake's log, with a log of its own). RUNNING: training now (a marker, Snakemake holds the
    lock). STALE: a result of an older model. Everything else missing; checkpoints all fetched."""
    study = load_study(CONFIG)
    for cell in study.cells:  # every checkpoint a cell reads, a fused pair's towers' included
        backbone = study.backbones[cell.backbone]
        for member in backbone.members or (cell.backbone,):
            objective = next(iter(study.backbones[member].checkpoints)) if backbone.members else cell.objective
            write(tmp_path / "resources" / "mini" / "checkpoints" / f"{member}@{objective}.ckpt", "x")
    model = sealed({"kind": "model", "spec": {"lr": 1}})
    for cell in (DONE, FAILED, STALE):
        trained(tmp_path, cell, model)
    for benchmark in ("vqa-v2", "refcoco"):
        evaluated(tmp_path, DONE, benchmark, model)
    evaluated(tmp_path, STALE, "vqa-v2", sealed({"kind": "model", "spec": {"lr": 2}}))
    failed_output = f"results/mini/evals/{FAILED}/vqa-v2.json"
    failed_log = f"logs/mini/evaluate/{FAILED}/vqa-v2.log"
    write(tmp_path / failed_log, "loading model\n" + "".join(f"batch {i}\n" for i in range(20))
          + "RuntimeError: CUDA out of memory\n")
    write(tmp_path / ".snakemake" / "log" / "2026-12-01T100000.000000.snakemake.log", "\n".join([
        "Building DAG of jobs...",
        "Error in rule evaluate:",
        "    message: evaluate cell on vqa-v2",
        "    jobid: 12",
        f"    input: results/mini/models/{FAILED}/model.safetensors",
        f"    output: {failed_output}",
        f"    log: {failed_log} (check log file(s) for error details)",
        "    shell:",
        "        vlmswap evaluate ...",
        "        (command exited with non-zero exit code)",
        "",
        "Shutting down, this might take some time.",
    ]) + "\n")
    for output in (f"results/mini/models/{RUNNING}/model.safetensors", f"results/mini/models/{RUNNING}/train.json"):
        write(marker_path(tmp_path, output), json.dumps({"external_jobid": None}))
    write(tmp_path / f"logs/mini/train/{RUNNING}.log", "step 10/394 loss 2.1 (0.40s/step, 900 tokens/s, ETA 2m35s)\n")
    write(tmp_path / ".snakemake" / "locks" / "0.output.lock", "")
    return tmp_path


def stages(status) -> dict[str, dict[str, object]]:
    return {c.cell: {s.stage: s for s in c.stages} for c in status.cells}


def test_snakemake_state_is_read_from_its_markers_lock_and_logs(study_dir):
    state = read_snakemake_state(study_dir)
    assert state.locked
    assert state.incomplete == {f"results/mini/models/{RUNNING}/model.safetensors",
                                f"results/mini/models/{RUNNING}/train.json"}
    assert state.failures == {f"results/mini/evals/{FAILED}/vqa-v2.json":
                              ("evaluate", [f"logs/mini/evaluate/{FAILED}/vqa-v2.log"])}


def test_a_partly_finished_partly_failed_study(study_dir):
    status = grid_status(load_study(CONFIG), study_dir)
    grid = stages(status)
    assert {s.state for s in grid[DONE].values()} == {"done"}
    assert grid[FAILED]["train"].state == "done" and grid[FAILED]["evaluate:refcoco"].state == "missing"
    failed = grid[FAILED]["evaluate:vqa-v2"]
    assert failed.state == "failed" and "rule evaluate failed" in failed.why
    assert failed.log_tail[-1] == "RuntimeError: CUDA out of memory" and len(failed.log_tail) == 8
    assert grid[RUNNING]["train"].state == "running" and "ETA" in grid[RUNNING]["train"].log_tail[-1]
    assert grid[STALE]["evaluate:vqa-v2"].state == "stale" and "another config" in grid[STALE]["evaluate:vqa-v2"].why
    assert all(s["checkpoint"].state == "done" for s in grid.values())
    # 7 checkpoints done; trains: 3 done, 1 running, 3 missing; 14 evaluations: 2 done, 1 failed, 1 stale, 10 missing;
    # 2 tables, findings and figures missing
    # config/mini.yaml: 7 cells + the 2 stage-ablation cells (their checkpoint is done, the rest missing)
    assert status.totals == {"done": 14, "running": 1, "failed": 1, "missing": 24, "stale": 1}
    assert [a.stage for a in status.aggregates] == ["table:mini", "table:mini-objective", "table:stage-ablation",
                                                    "findings", "figures"]


def test_a_killed_run_leaves_its_running_jobs_failed(study_dir):
    (study_dir / ".snakemake" / "locks" / "0.output.lock").unlink()
    train = stages(grid_status(load_study(CONFIG), study_dir))[RUNNING]["train"]
    assert train.state == "failed" and "--rerun-incomplete" in train.why
    assert train.log == f"logs/mini/train/{RUNNING}.log"


def test_a_later_success_clears_a_logged_failure(study_dir):
    evaluated(study_dir, FAILED, "vqa-v2", sealed({"kind": "model", "spec": {"lr": 1}}))
    assert stages(grid_status(load_study(CONFIG), study_dir))[FAILED]["evaluate:vqa-v2"].state == "done"


def test_status_command_text_and_json(study_dir, capsys):
    main(["status", "--config", str(CONFIG), "--workdir", str(study_dir)])
    text = capsys.readouterr().out
    assert f"failed: {FAILED} evaluate:vqa-v2: rule evaluate failed" in text
    assert "    | RuntimeError: CUDA out of memory" in text
    assert f"running: {RUNNING} train" in text
    assert "14 done, 1 running, 1 failed, 24 missing, 1 stale" in text and "Snakemake is running here" in text
    main(["status", "--config", str(CONFIG), "--workdir", str(study_dir), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["failed"] == 1 and data["snakemake_running"] is True
    cell = next(c for c in data["cells"] if c["cell"] == FAILED)
    assert next(s for s in cell["stages"] if s["stage"] == "evaluate:vqa-v2")["log_tail"][-1].startswith("RuntimeError")


def test_a_failed_mini_pretraining_fails_the_checkpoint_stage(study_dir):
    """As a real killed mini run logs it: the fetch never ran because its input's job failed."""
    (study_dir / "resources/mini/checkpoints/vitdet-mini@det.ckpt").unlink()
    write(study_dir / "logs/mini/pretrain_mini/vitdet-mini@det.log", "[19:34:15] pretrain vitdet-mini@det\n")
    write(study_dir / ".snakemake" / "log" / "2026-12-01T110000.000000.snakemake.log", "\n".join([
        "Error in rule pretrain_mini:",
        "    message: None",
        "    jobid: 28",
        "    input: resources/mini/world/world.json",
        "    output: resources/mini/pretrained/vitdet-mini@det.pth",
        "    log: logs/mini/pretrain_mini/vitdet-mini@det.log (check log file(s) for error details)",
        "",
    ]) + "\n")
    checkpoint = stages(grid_status(load_study(CONFIG), study_dir))["vitdet-mini@det@64@last-block@mlp2"]["checkpoint"]
    assert checkpoint.state == "failed" and "rule pretrain_mini failed" in checkpoint.why
    assert checkpoint.log_tail == ["[19:34:15] pretrain vitdet-mini@det"]
