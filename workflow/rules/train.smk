# One training job per cell. Declared outputs are the final model only; the resume state lives
# in {OUT}/resume/{cell}/, which Snakemake does not own, so a retried or requeued job continues
# from its last saved step (Snakemake deletes declared outputs before every attempt).
# (`checkpoints` below are the backbone's fetched weights, never resume state.)


rule train:
    input:
        checkpoints=cell_checkpoints,
        llm=f"{RES}/llm",
        instruct=f"{RES}/prepared/instruct.json",
    output:
        model=f"{OUT}/models/{{cell}}/model.safetensors",
        summary=f"{OUT}/models/{{cell}}/train.json",
        losses=f"{OUT}/models/{{cell}}/loss.jsonl",
    params:
        spec=cell_spec,  # config -> model: a change reruns exactly the cells it touches
        state_dir=lambda wc: f"{OUT}/resume/{wc.cell}",
        out=lambda wc: model_dir(wc.cell),
        json=instruct_paths()[0],
        image_root=instruct_paths()[1],
    # torch threads per rank: the CPUs SLURM gives each GPU (or the laptop's cores in the mini study)
    threads: STUDY.train_resources.threads_per_rank
    resources:
        **train_resources(STUDY.train_resources),
    log:
        f"{LOGS}/train/{{cell}}.log",
    conda:
        "../envs/vlmswap.yaml"
    message:
        "train {wildcards.cell} ({resources.nodes} node(s), {resources.train_gpus} GPU(s), "
        "{resources.cpus_per_task} CPUs, {resources.mem_mb} MB, {resources.runtime} min)"
    shell:
        "OMP_NUM_THREADS={threads} vlmswap train --nodes {resources.nodes} --gpus {resources.train_gpus} --cell '{wildcards.cell}' "
        "--checkpoint {input.checkpoints} --llm {input.llm} --instruct-json {params.json} "
        "--image-root {params.image_root} --out {params.out} --state-dir {params.state_dir} 2>&1 | tee {log}"
