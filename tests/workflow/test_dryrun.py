"""Dry runs of the paper grid through the Snakemake API: job counts per rule and the resources
the SLURM plugin maps. No network, GPU, download or SLURM involved."""

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "config" / "experiments.yaml"


def dry_run(configfile: Path, targets=(), executor="dryrun", pseudo=None, workdir=ROOT, executor_settings=None):
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (ConfigSettings, DAGSettings, OutputSettings, Quietness,
                                          ResourceSettings, StorageSettings)

    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(cores=1, nodes=100),
            config_settings=ConfigSettings(configfiles=[configfile]),
            storage_settings=StorageSettings(),
            snakefile=ROOT / "Snakefile",
            workdir=workdir,
        )
        dag_api = workflow_api.dag(DAGSettings(targets=set(targets), forceall=True))
        dag_api.execute_workflow(executor=executor, pseudo_executor=pseudo, executor_settings=executor_settings)
        return list(workflow_api._workflow.dag.jobs)


def evaluations(jobs) -> set[tuple[str, str]]:
    """(cell, benchmark) of every result the evaluation jobs write (one job per cell and column group)."""
    out = set()
    for job in jobs:
        if job.rule.name.startswith("evaluate_"):
            for path in job.output:
                cell, name = Path(path).parts[-2:]
                if not name.endswith(".group.json"):  # the job's record of what it wrote
                    out.add((cell, name.removesuffix(".json")))
    return out


@pytest.fixture(scope="module")
def paper_jobs(tmp_path_factory):
    return dry_run(PAPER, workdir=tmp_path_factory.mktemp("paper"))


def test_paper_grid_lists_every_job(paper_jobs):
    study = yaml.safe_load(PAPER.read_text())
    counts = Counter(job.rule.name for job in paper_jobs)
    n_bench = len(study["benchmarks"])
    # the paper's 99 rows plus the 6 stage-2/4 cells of Appendix B (diagnostics.stage_ablation)
    n_cells = len(study["cells"]) + 6
    assert n_cells == 105
    assert counts["train"] == 105
    assert len(evaluations(paper_jobs)) == n_cells * n_bench == 1050
    # one model load per cell and column group, not per benchmark
    assert counts["evaluate_vqa"] == counts["evaluate_loc"] == n_cells
    assert counts["table"] == len(study["tables"]) + 1  # + stage-ablation
    assert counts["correlation"] == 1 and counts["fetch_llm"] == 1 and counts["prepare_instruct"] == 1
    assert counts["prepare_benchmark"] == n_bench
    checkpoints = {(c["backbone"], c["objective"]) for c in study["cells"]
                   if study["backbones"][c["backbone"]]["family"] != "fused"}
    assert counts["fetch_backbone"] >= len(checkpoints)
    assert "mini_world" not in counts and "pretrain_mini" not in counts
    # the researcher's view: findings, figures and one provenance page per cell, for the HTML report
    assert counts["findings"] == 1 and counts["figures"] == 1 and counts["provenance"] == n_cells
    outputs = {str(f) for job in paper_jobs for f in job.output}
    assert {"results/paper/findings.md", "results/paper/findings.json", "results/paper/figures/loss.png",
            "results/paper/figures/ours-vs-paper.pdf", "results/paper/figures/tables/table-1.png",
            "results/paper/tables/table-1.tex", "results/paper/tables/table-1.html"} <= outputs
    reported = {str(f) for job in paper_jobs for f in job.output if f.flags.get("report")}
    assert "results/paper/findings.html" in reported and "results/paper/tables/table-36.html" in reported
    assert sum(f.startswith("results/paper/provenance/") for f in reported) == n_cells


def test_aggregating_rules_depend_on_one_record_per_evaluation_job(paper_jobs):
    """Tables, correlation, findings, figures and provenance read many results; they depend on each
    evaluation job's `{group}.group.json` instead, which keeps the grid's planning under 3 s
    (benchmarks/dryrun.py: 10,794 input files before, 5,262 after)."""
    evaluated = {str(f) for job in paper_jobs if job.rule.name.startswith("evaluate_") for f in job.output}
    records = {f for f in evaluated if f.endswith(".group.json")}
    assert len(records) == 2 * 105
    for job in paper_jobs:
        if job.rule.name in ("table", "correlation", "findings", "figures", "provenance", "probe_figure"):
            results = {str(f) for f in job.input} & evaluated
            assert results and results <= records, job.rule.name
    assert sum(len(job.input) for job in paper_jobs) < 6000


def test_train_jobs_carry_the_cluster_resources(paper_jobs):
    study = yaml.safe_load(PAPER.read_text())
    spec = study["train_resources"]
    train = [j for j in paper_jobs if j.rule.name == "train"]
    res = train[0].resources
    gpus = spec["gpus_per_node"]
    assert res["gpu"] == gpus and res["nodes"] == spec["nodes"]
    assert res["cpus_per_task"] == spec["cpus_per_gpu"] * gpus
    assert res["mem_mb"] == spec["mem_mb_per_gpu"] * gpus
    assert res["runtime"] == spec["runtime_min"]
    # the rule names the job's size; `vlmswap train` starts torchrun itself (tests/train/test_launch.py)
    assert f" vlmswap train --nodes 1 --gpus {gpus} " in train[0].shellcmd
    assert sys.executable not in train[0].shellcmd  # moving the venv changes no rule text


def test_diagnostics_are_listed_with_gpu_resources(paper_jobs):
    study = yaml.safe_load(PAPER.read_text())
    diagnostics = study["diagnostics"]
    counts = Counter(job.rule.name for job in paper_jobs)
    assert counts["profile"] == len(diagnostics["profile"]["cells"]) == 3  # one GPU job per backbone
    assert counts["collapse"] == len(diagnostics["collapse"]["cells"])
    assert counts["probe"] == len(diagnostics["linear_probe"]["cells"])
    assert counts["fetch_probe_dataset"] == len(diagnostics["linear_probe"]["datasets"]) == 7
    assert counts["profile_figure"] == counts["collapse_figure"] == counts["probe_figure"] == 1
    assert counts["figure2"] == len(diagnostics["figure2"]["cells"]) == 2 and counts["figure2_figure"] == 1
    for rule, key in (("profile", "profile"), ("collapse", "collapse"), ("probe", "linear_probe"),
                      ("figure2", "figure2")):
        spec = diagnostics[key]["resources"]
        for job in (j for j in paper_jobs if j.rule.name == rule):
            assert job.resources["gpu"] == spec["gpus"] == 1
            assert job.resources["mem_mb"] == spec["mem_mb"] and job.resources["runtime"] == spec["runtime_min"]
            assert job.shellcmd.lstrip().startswith("OMP_NUM_THREADS=1 vlmswap " + rule + " ")
    stage_table = [j for j in paper_jobs if j.rule.name == "table" and j.wildcards["table"] == "stage-ablation"]
    assert len(stage_table) == 1
    cells = {Path(p).parent.name for p in stage_table[0].input if "/evals/" in p and p.endswith("vqa.group.json")}
    assert cells == {f"{b}@in1k@224@{t}@mlp2" for b in ("vmamba-t", "maxvit-t", "mambavision-t")
                     for t in ("stage2", "stage3", "stage4")}


def test_one_table_schedules_only_what_it_needs(tmp_path):
    study = yaml.safe_load(PAPER.read_text())
    cells = study["tables"]["table-5"]["cells"]
    jobs = dry_run(PAPER, targets=["results/paper/tables/table-5.md"], workdir=tmp_path)
    counts = Counter(job.rule.name for job in jobs)
    assert study["tables"]["table-5"]["columns"] == "vqa"
    vqa = {"vqa-v2", "gqa", "vizwiz", "textvqa", "pope", "tallyqa"}  # Table 5 shows VQA columns only
    assert counts["train"] == len(cells) == 14
    assert counts["evaluate_vqa"] == len(cells) and "evaluate_loc" not in counts
    assert evaluations(jobs) == {(c, b) for c in cells for b in vqa} and len(evaluations(jobs)) == 84
    for rule in ("prepare_benchmark", "baselines", "fetch_benchmark"):  # no localization download or index
        assert {j.wildcards["benchmark"] for j in jobs if j.rule.name == rule} == vqa
    assert counts["table"] == 1 and "correlation" not in counts
    assert {j.wildcards["cell"] for j in jobs if j.rule.name == "train"} == set(cells)


def test_a_localization_table_plans_every_benchmark_for_its_overall_average(tmp_path):
    study = yaml.safe_load(PAPER.read_text())
    loc = next(t for t, spec in study["tables"].items() if spec["columns"] == "loc")
    cells = study["tables"][loc]["cells"]
    jobs = dry_run(PAPER, targets=[f"results/paper/tables/{loc}.md"], workdir=tmp_path)
    assert evaluations(jobs) == {(c, b) for c in cells for b in study["benchmarks"]}


def test_two_node_training_generates_an_srun_launch(tmp_path):
    study = yaml.safe_load(PAPER.read_text())
    study["train_resources"] = {**study["train_resources"], "nodes": 2, "gpus_per_node": 4}
    config = tmp_path / "two-nodes.yaml"
    config.write_text(yaml.safe_dump(study, sort_keys=False))
    jobs = dry_run(config, targets=["results/paper/tables/table-1.md"], workdir=tmp_path)
    train = next(j for j in jobs if j.rule.name == "train")
    assert train.resources["mpi"] == "srun" and train.resources["tasks"] == 2
    assert train.resources["gres"] == "gpu:4" and train.resources["nodes"] == 2
    assert " vlmswap train --nodes 2 --gpus 8 " in train.shellcmd


def _rule_counts(out: subprocess.CompletedProcess) -> dict[str, str]:
    import re

    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    return dict(re.findall(r"^(\w+)\s+(\d+)$", out.stdout + out.stderr, flags=re.M))


def test_slurm_profile_dry_run_from_the_repository_root():
    """`snakemake -n --profile slurm --configfile config/experiments.yaml` as a user types it: the
    example profile selects the SLURM executor (which needs no SLURM installation for a dry run)."""
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--profile", "slurm", "--configfile",
                          "config/experiments.yaml", "--quiet", "rules"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    counts = _rule_counts(out)
    assert counts["train"] == "105" and counts["evaluate_vqa"] == counts["evaluate_loc"] == "105"  # 99 rows + 6 stage-ablation cells
    assert counts["table"] == "25"  # + stage-ablation
    assert counts["findings"] == "1" and counts["figures"] == "1" and counts["provenance"] == "105"


def test_the_workflow_runs_from_any_directory_with_a_copied_profile(tmp_path):
    """A scratch work directory holding a copy of the profile and of the config; the workflow is
    named by path. Nothing may depend on the repository being the current directory."""
    import shutil

    work = tmp_path / "scratch work"
    shutil.copytree(ROOT / "slurm", work / "my-site")
    shutil.copy(PAPER, work / "study.yaml")
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", "--profile",
                          "my-site", "--configfile", "study.yaml", "--quiet", "rules"],
                         cwd=work, capture_output=True, text=True, timeout=300)
    assert _rule_counts(out)["train"] == "105"
    # the mini study, its config found beside the Snakefile, from elsewhere
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", "--cores", "1",
                          "--quiet", "rules"], cwd=work, capture_output=True, text=True, timeout=300)
    assert _rule_counts(out)["train"] == "9"  # 7 + the stage-2/4 cells of VMamba-mini


def test_a_wrong_config_value_stops_the_dry_run_with_the_key_path(tmp_path):
    study = yaml.safe_load(PAPER.read_text())
    study["cells"][3]["connector"] = "mlp4"
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(study, sort_keys=False))
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(config), "--cores", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "cells[3].connector" in out.stdout + out.stderr and "mlp2, mlp3" in out.stdout + out.stderr


def test_a_config_override_without_a_configfile_says_where_the_study_is_read_from(tmp_path):
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", "--cores", "1",
                          "--config", "study=foo"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "IndexError" not in text, text
    assert f"the rules read the study from {ROOT / 'config' / 'mini.yaml'}; --config overrides do not reach them" in text
    assert "pass it with --configfile" in text


def _sbatch(job) -> str:
    """The sbatch line the SLURM executor plugin would submit for `job`, from the plugin itself."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    params = {"run_uuid": "uuid", "slurm_logfile": "log", "comment_str": "train", "account": "-A acct",
              "partition": "-p gpu", "workdir": "."}
    return get_submit_command(job, params) + set_gres_string(job)


def slurm_dry_run(configfile: Path, workdir: Path):
    """Through the real SLURM executor plugin in Snakemake's dry-run mode (no SLURM needed)."""
    from snakemake_executor_plugin_slurm import ExecutorSettings

    return dry_run(configfile, targets=["results/paper/tables/table-1.md"], executor="slurm", pseudo="dryrun",
                   workdir=workdir, executor_settings=ExecutorSettings())


def test_sbatch_for_one_node(tmp_path):
    jobs = slurm_dry_run(PAPER, tmp_path)
    train = next(j for j in jobs if j.rule.name == "train")
    line = _sbatch(train)
    assert "--nodes=1" in line and "--gpus=4" in line and "--mem 256000" in line and "-t 1440" in line
    assert "--ntasks-per-gpu" not in line  # plugin >= 2.7.1: one task drives torchrun's 4 ranks


def test_sbatch_for_two_nodes(tmp_path):
    study = yaml.safe_load(PAPER.read_text())
    study["train_resources"] = {**study["train_resources"], "nodes": 2, "gpus_per_node": 4}
    config = tmp_path / "two-nodes.yaml"
    config.write_text(yaml.safe_dump(study, sort_keys=False))
    jobs = slurm_dry_run(config, tmp_path)
    line = _sbatch(next(j for j in jobs if j.rule.name == "train"))
    assert "--nodes=2" in line and "--ntasks=2" in line and "--gres=gpu:4" in line
    assert "--gpus=" not in line and "--ntasks-per-gpu" not in line


def test_the_dry_run_shows_each_jobs_resources():
    out = subprocess.run([sys.executable, "-m", "snakemake", "results/paper/tables/table-5.md", "-n", "--configfile",
                          "config/experiments.yaml"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "(1 node(s), 4 GPU(s), 32 CPUs, 256000 MB, 1440 min)" in text
    assert "on vqa-v2, gqa, vizwiz, textvqa, pope, tallyqa (" in text and "GPU(s)" in text


def test_planning_the_paper_grid_imports_no_ml_library():
    """Rule params are evaluated for every job of a dry run: a settings helper that pulls in torch
    (3 s of the paper grid's 9 s dry run, issue 16) or another ML library must not be reached."""
    script = (
        "import atexit, runpy, sys\n"
        "atexit.register(lambda: print('LOADED', sorted(m for m in ('torch', 'transformers', 'deepspeed', "
        "'sklearn', 'matplotlib', 'timm') if m in sys.modules)))\n"
        "sys.argv = ['snakemake', '-n', '-q', '--configfile', 'config/experiments.yaml']\n"
        "runpy.run_module('snakemake', run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = [line for line in done.stdout.splitlines() if line.startswith("LOADED")]
    assert loaded == ["LOADED []"], loaded
