# One evaluation job per (cell, benchmark): batched greedy generation, the benchmark's own scorer,
# and the result contract {OUT}/evals/{cell}/{benchmark}.json (scores in percent, n_samples).


def _eval_resources():
    spec = config.get("eval_resources", {})
    resources = {"runtime": int(spec.get("runtime_min", 60)), "mem_mb": int(spec.get("mem_mb", 8000))}
    if int(spec.get("gpus", 0)):
        resources["gpu"] = int(spec["gpus"])
        resources["cpus_per_task"] = int(spec.get("cpus", 8))
    if spec.get("partition"):
        resources["slurm_partition"] = spec["partition"]
    return resources


def _eval_launcher():
    gpus = int(config.get("eval_resources", {}).get("gpus", 0))
    if gpus > 1:  # shard the benchmark over the job's GPUs, one process each
        return f"{sys.executable} -m torch.distributed.run --standalone --nproc-per-node {gpus} -m vlmswap.cli"
    return VLMSWAP


EVAL_LAUNCHER = _eval_launcher()  # a shell global, not a param: how it starts is not what it computes


rule evaluate:
    input:
        model=f"{OUT}/models/{{cell}}/model.safetensors",
        checkpoints=cell_checkpoints,
        llm=f"{RES}/llm",
        index=f"{RES}/prepared/{{benchmark}}.json",
    output:
        eval_json("{cell}", "{benchmark}"),
    params:
        model=lambda wc: model_dir(wc.cell),
        eval=canonical_json(eval_settings(STUDY)),
    threads: 1
    resources:
        **_eval_resources(),
    log:
        f"{LOGS}/evaluate/{{cell}}/{{benchmark}}.log",
    conda:
        "../envs/vlmswap.yaml"
    message:
        "evaluate {wildcards.cell} on {wildcards.benchmark}"
    shell:
        "OMP_NUM_THREADS={threads} {EVAL_LAUNCHER} evaluate --config {CFG} --cell '{wildcards.cell}' "
        "--checkpoint {input.checkpoints} --llm {input.llm} --model {params.model} --index {input.index} "
        "--out {output} 2>&1 | tee {log}"
