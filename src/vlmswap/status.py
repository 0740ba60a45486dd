"""Where the grid stands: per cell and stage (checkpoint, train, each evaluation) and for the
study's aggregates (tables, findings, figures), one of done / running / failed / missing / stale.

What it reads, all on disk, never Snakemake's Python API (so it answers in a second while a run
is going, from another shell or the SLURM submit host):
- the outputs themselves (a result is *stale* when it no longer belongs to its cell's model:
  `provenance.result_staleness`, the same check the tables make);
- `.snakemake/incomplete/`: Snakemake marks each output of a job it started and removes the
  marker when the job finishes; a marker while a Snakemake process holds `.snakemake/locks/` is a
  *running* job, a marker without one is a job a killed run left behind (*failed*, rerun with
  `--rerun-incomplete`);
- `.snakemake/log/*.snakemake.log`: every "Error in rule ..." block names the job's outputs and log;
  such an output that is still missing is *failed*, shown with the last lines of the job's log.
"""

from __future__ import annotations

import json
import os
import re
from base64 import urlsafe_b64decode
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vlmswap.study import Study

__all__ = ["CellStatus", "GridStatus", "SnakemakeState", "StageStatus", "STATES", "grid_status",
           "read_snakemake_state", "to_json", "to_text"]

STATES = ("done", "running", "failed", "missing", "stale")
LOG_TAIL_LINES = 8


@dataclass
class StageStatus:
    stage: str  # checkpoint | train | evaluate:<benchmark> | table:<id> | findings | figures
    state: str  # one of STATES
    outputs: list[str]
    why: str | None = None
    log: str | None = None
    log_tail: list[str] = field(default_factory=list)


@dataclass
class CellStatus:
    cell: str
    stages: list[StageStatus]


@dataclass
class GridStatus:
    study: str
    results: str
    snakemake_running: bool
    cells: list[CellStatus]
    aggregates: list[StageStatus]
    totals: dict[str, int]


@dataclass
class SnakemakeState:
    incomplete: set[str]  # outputs of jobs that started and have not finished
    locked: bool  # a Snakemake process is running in this working directory
    failures: dict[str, tuple[str, list[str]]]  # output -> (rule, its log files), from Snakemake's logs


def _decode_marker(path: Path, root: Path) -> str | None:
    """An incomplete marker's file path back to the output path (Snakemake's FilePersistence
    splits long urlsafe-base64 names into segments, each but the last prefixed with '@')."""
    text = "".join(part.removeprefix("@") for part in path.relative_to(root).parts)
    try:
        return urlsafe_b64decode(text.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def read_snakemake_state(workdir: Path) -> SnakemakeState:
    meta = Path(workdir) / ".snakemake"
    incomplete: set[str] = set()
    markers = meta / "incomplete"
    if markers.is_dir():
        for dirpath, _, files in os.walk(markers):
            for name in files:
                if name == "migration_underway":
                    continue
                output = _decode_marker(Path(dirpath) / name, markers)
                if output:
                    incomplete.add(os.path.normpath(output))
    locks = meta / "locks"
    locked = locks.is_dir() and any(locks.iterdir())
    failures: dict[str, tuple[str, list[str]]] = {}
    logs = sorted((meta / "log").glob("*.snakemake.log")) if (meta / "log").is_dir() else []
    for log_file in logs:  # oldest first: a later failure of the same output wins
        rule = None
        for line in log_file.read_text(errors="replace").splitlines():
            if m := re.match(r"Error in rule (\S+):", line):
                rule, outputs, job_logs = m.group(1), [], []
            elif rule and (m := re.match(r"\s+output: (.*)", line)):
                outputs = [os.path.normpath(o.strip()) for o in m.group(1).split(",") if o.strip()]
            elif rule and (m := re.match(r"\s+log: (.*?)(?: \(check log file\(s\) for error details\))?$", line)):
                job_logs = [p.strip() for p in m.group(1).split(",") if p.strip()]
            elif rule and not line.startswith(" "):  # the block ended
                for output in outputs:
                    failures[output] = (rule, job_logs)
                rule = None
        if rule:
            for output in outputs:
                failures[output] = (rule, job_logs)
    return SnakemakeState(incomplete, locked, failures)


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    if not path.is_file():
        return []
    return [line.rstrip() for line in path.read_text(errors="replace").splitlines() if line.strip()][-lines:]


def _stage(stage: str, outputs: list[str], log: str, workdir: Path, state: SnakemakeState,
           upstream: tuple[str, ...] = ()) -> StageStatus:
    """The state of one job from its outputs: running/failed if Snakemake says so, else done/missing.
    `upstream` are outputs of the job(s) that make this stage's input within the same stage (the mini
    study's pretraining before a fetch): their running or failure is this stage's."""
    keys = [os.path.normpath(o) for o in (*outputs, *upstream)]
    if any(k in state.incomplete for k in keys):
        if state.locked:
            return StageStatus(stage, "running", outputs, log=log, log_tail=_tail(workdir / log, 2))
        return StageStatus(stage, "failed", outputs,
                           why="interrupted: a Snakemake run was killed while this job ran; "
                               "`snakemake --unlock` if needed, then `snakemake --rerun-incomplete`",
                           log=log, log_tail=_tail(workdir / log))
    if all((workdir / o).exists() for o in outputs):
        return StageStatus(stage, "done", outputs)
    failed = next((state.failures[k] for k in keys if k in state.failures), None)
    if failed:
        rule, logs = failed
        job_log = logs[0] if logs else log
        return StageStatus(stage, "failed", outputs, why=f"rule {rule} failed (Snakemake's log)", log=job_log,
                           log_tail=_tail(workdir / job_log))
    return StageStatus(stage, "missing", outputs)


def grid_status(study: Study, workdir: Path = Path("."), results: Path | None = None) -> GridStatus:
    """Every cell's stages and the study's aggregates; paths as the workflow lays them out."""
    from vlmswap.analysis.report import staleness_against

    workdir = Path(workdir)
    out = results if results is not None else Path("results") / study.name
    res, logs = Path("resources") / study.name, Path("logs") / study.name
    state = read_snakemake_state(workdir)
    check = staleness_against(workdir / out)
    cells = []
    for cell in study.cells:
        backbone = study.backbones[cell.backbone]
        pairs = ([(m, o) for m in backbone.members for o in study.backbones[m].checkpoints] if backbone.members
                 else [(cell.backbone, cell.objective)])
        pretrained = tuple(str(res / "pretrained" / f"{b}@{o}.pth") for b, o in pairs
                           if "mini" in study.checkpoint_source(b, o))
        stages = [_stage("checkpoint", [str(res / "checkpoints" / f"{b}@{o}.ckpt") for b, o in pairs],
                         str(logs / "fetch_backbone" / f"{pairs[0][0]}@{pairs[0][1]}.log"), workdir, state,
                         upstream=pretrained)]
        model = out / "models" / cell.id
        stages.append(_stage("train", [str(model / "train.json"), str(model / "model.safetensors")],
                             str(logs / "train" / f"{cell.id}.log"), workdir, state))
        for benchmark in study.benchmarks:
            path = out / "evals" / cell.id / f"{benchmark}.json"
            status = _stage(f"evaluate:{benchmark}", [str(path)], str(logs / "evaluate" / cell.id / f"{benchmark}.log"),
                            workdir, state)
            if status.state == "done":
                why = check(cell.id, json.loads((workdir / path).read_text()))
                if why:
                    status.state, status.why = "stale", why
            stages.append(status)
        cells.append(CellStatus(cell.id, stages))
    aggregates = [_stage(f"table:{t}", [str(out / "tables" / f"{t}.md")], str(logs / "table" / f"{t}.log"),
                         workdir, state) for t in study.tables]
    aggregates.append(_stage("findings", [str(out / "findings.json")], str(logs / "findings.log"), workdir, state))
    aggregates.append(_stage("figures", [str(out / "figures" / "loss.png")], str(logs / "figures.log"), workdir, state))
    totals = {s: 0 for s in STATES}
    for stage in [s for c in cells for s in c.stages] + aggregates:
        totals[stage.state] += 1
    return GridStatus(study.name, str(out), state.locked, cells, aggregates, totals)


def to_json(status: GridStatus) -> str:
    return json.dumps(asdict(status), indent=2)


def to_text(status: GridStatus) -> str:
    """A grid: one row per cell, one column per stage, then the failures with their log tails."""
    abbreviations = {"done": "done", "running": "RUN", "failed": "FAIL", "missing": "-", "stale": "stale"}
    stages = [s.stage for s in status.cells[0].stages] if status.cells else []
    width = max([len(c.cell) for c in status.cells] + [4])
    columns = [max(len(s), 5) for s in stages]
    lines = [f"{'cell'.ljust(width)}  " + "  ".join(s.ljust(w) for s, w in zip(stages, columns))]
    for cell in status.cells:
        lines.append(f"{cell.cell.ljust(width)}  " + "  ".join(
            abbreviations[s.state].ljust(w) for s, w in zip(cell.stages, columns)))
    lines.append("")
    lines += [f"{s.stage}: {s.state}" for s in status.aggregates]
    troubled = [(c.cell, s) for c in status.cells for s in c.stages] + [("study", s) for s in status.aggregates]
    for owner, s in troubled:
        if s.state in ("failed", "stale", "running"):
            lines += ["", f"{s.state}: {owner} {s.stage}" + (f": {s.why}" if s.why else "")
                      + (f" (log {s.log})" if s.log and s.state != "stale" else "")]
            lines += [f"    | {line}" for line in s.log_tail]
    totals = ", ".join(f"{n} {state}" for state, n in status.totals.items())
    lines += ["", f"{totals} (stages under {status.results}; Snakemake is "
                  f"{'running here' if status.snakemake_running else 'not running here'}); `snakemake` reruns "
                  "what is stale, failed or missing"]
    return "\n".join(lines) + "\n"
