# The paper's diagnostics (README, Diagnostics; vlmswap.diagnostics). The Appendix B stage ablation
# needs no rule of its own: its cells train and evaluate like every cell, and its table is the
# `stage-ablation` table. Profiling is one (GPU) job per cell; the linear probes one job per
# backbone checkpoint seen through a cell (datasets fetched on the submit host); the collapse probes
# one job per trained cell; each has a local summary rule (CSV + figure). Helpers live in common.smk.


rule profile:
    input:
        llm=f"{RES}/llm",
    output:
        f"{OUT}/diagnostics/profile/{{cell}}.csv",
    params:
        spec=profile_spec,  # the sweep settings and the cell's backbone/connector -> the timings
    threads: 1
    resources:
        **diagnostic_resources("profile"),
    log:
        f"{LOGS}/profile/{{cell}}.log",
    conda:
        "../envs/vlmswap.yaml"
    message:
        "profile {wildcards.cell} across square resolutions "
        "({resources.diag_gpus} GPU(s), {resources.mem_mb} MB, {resources.runtime} min)"
    shell:
        "OMP_NUM_THREADS={threads} vlmswap profile --cell '{wildcards.cell}' --llm {input.llm} --out {output} "
        "2>&1 | tee {log}"


rule profile_figure:
    localrule: True
    input:
        [f"{OUT}/diagnostics/profile/{c}.csv" for c in diagnostic_cells("profile")],
    output:
        csv=f"{OUT}/diagnostics/profile.csv",
        png=f"{OUT}/diagnostics/profile.png",
    log:
        f"{LOGS}/profile.log",
    conda:
        "../envs/vlmswap.yaml"
    message:
        "the profiling CSV and six-panel figure (paper App. G, Fig. 4)"
    shell:
        "vlmswap profile-figure --inputs {input} --out-csv {output.csv} --out-png {output.png} 2>&1 | tee {log}"


rule collapse:
    input:
        model=f"{OUT}/models/{{cell}}/model.safetensors",
        checkpoints=cell_checkpoints,
        llm=f"{RES}/llm",
        index=collapse_index(),
    output:
        f"{OUT}/diagnostics/collapse/{{cell}}.csv",
    params:
        model=lambda wc, input: os.path.dirname(input.model),
        spec=collapse_spec(),  # layers, benchmark, image count -> the probes
    threads: 1
    resources:
        **diagnostic_resources("collapse"),
    log:
        f"{LOGS}/collapse/{{cell}}.log",
    conda:
        "../envs/vlmswap.yaml"
    message:
        "position probes of {wildcards.cell} (tap, connector, LLM layers) "
        "({resources.diag_gpus} GPU(s), {resources.mem_mb} MB, {resources.runtime} min)"
    shell:
        "OMP_NUM_THREADS={threads} vlmswap collapse --cell '{wildcards.cell}' --checkpoint {input.checkpoints} "
        "--llm {input.llm} --model {params.model} --index {input.index} --out {output} 2>&1 | tee {log}"


rule collapse_figure:
    localrule: True
    input:
        probes=[f"{OUT}/diagnostics/collapse/{c}.csv" for c in diagnostic_cells("collapse")],
        # the findings print each cell's grounding score beside its verdict
        evals=[eval_json(c, DIAGNOSTICS.get("collapse", {}).get("benchmark", "refcoco"))
               for c in diagnostic_cells("collapse")],
    output:
        csv=f"{OUT}/diagnostics/collapse.csv",
        png=f"{OUT}/diagnostics/collapse.png",
        md=f"{OUT}/diagnostics/collapse.md",
    params:
        results=lambda wc, output: os.path.dirname(os.path.dirname(output.csv)),
    log:
        f"{LOGS}/collapse.log",
    conda:
        "../envs/vlmswap.yaml"
    message:
        "collapse diagnosis: probe AUC along the pipeline, findings per cell"
    shell:
        "vlmswap collapse-figure --inputs {input.probes} --results {params.results} --out-csv {output.csv} "
        "--out-png {output.png} --out-md {output.md} 2>&1 | tee {log}"


rule fetch_probe_dataset:
    localrule: True  # downloads run on the submit host (compute nodes are often offline)
    output:
        f"{RES}/probe-data/{{dataset}}.fetched.json",
    params:
        dest=lambda wc, output: output[0].removesuffix(".fetched.json"),
    log:
        f"{LOGS}/fetch_probe_dataset/{{dataset}}.log",
    conda:
        "../envs/vlmswap.yaml"
    message:
        "download the linear-probe dataset {wildcards.dataset} (torchvision)"
    shell:
        "vlmswap fetch-probe-dataset --dataset {wildcards.dataset} --dest {params.dest} --out {output} "
        "2>&1 | tee {log}"


rule probe:
    input:
        checkpoints=cell_checkpoints,
        data=probe_data_inputs,
    output:
        f"{OUT}/diagnostics/probes/{{cell}}.json",
    params:
        data=" ".join(f"{d}={probe_root(d)}" for d in probe_datasets()),
        spec=probe_spec(),  # datasets, caps, C grid -> the probe accuracies
    threads: 1
    resources:
        **diagnostic_resources("linear_probe"),
    log:
        f"{LOGS}/probe/{{cell}}.log",
    conda:
        "../envs/vlmswap.yaml"
    message:
        "linear probes of {wildcards.cell}'s frozen backbone "
        "({resources.diag_gpus} GPU(s), {resources.mem_mb} MB, {resources.runtime} min)"
    shell:
        "OMP_NUM_THREADS={threads} vlmswap probe --cell '{wildcards.cell}' --checkpoint {input.checkpoints} "
        "--data {params.data} --out {output} 2>&1 | tee {log}"


rule probe_figure:
    localrule: True
    input:
        probes=[f"{OUT}/diagnostics/probes/{c}.json" for c in diagnostic_cells("linear_probe")],
        # the rank correlation needs every VLM score of the probed cells
        evals=eval_groups(diagnostic_cells("linear_probe"), STUDY.benchmarks),
    output:
        csv=f"{OUT}/diagnostics/probes.csv",
        md=f"{OUT}/diagnostics/probes.md",
        png=f"{OUT}/diagnostics/probes.png",
    params:
        results=lambda wc, output: os.path.dirname(os.path.dirname(output.csv)),
    log:
        f"{LOGS}/probe_figure.log",
    conda:
        "../envs/vlmswap.yaml"
    message:
        "linear-probe table and its rank correlation with the VLM scores"
    shell:
        "vlmswap probe-figure --inputs {input.probes} --results {params.results} --out-csv {output.csv} "
        "--out-md {output.md} --out-png {output.png} 2>&1 | tee {log}"


rule figure2:
    input:
        model=f"{OUT}/models/{{cell}}/model.safetensors",
        checkpoints=cell_checkpoints,
        llm=f"{RES}/llm",
        index=f"{RES}/prepared/{figure2_benchmark()}.json",
        eval=eval_json("{cell}", figure2_benchmark()),  # the predicted boxes come from the evaluation
    output:
        f"{OUT}/diagnostics/figure2/{{cell}}.json",
    params:
        model=lambda wc, input: os.path.dirname(input.model),
        spec=figure2_spec(),  # examples and layer -> the maps
    threads: 1
    resources:
        **diagnostic_resources("figure2"),
    log:
        f"{LOGS}/figure2/{{cell}}.log",
    conda:
        "../envs/vlmswap.yaml"
    message:
        "Figure 2 maps of {wildcards.cell} "
        "({resources.diag_gpus} GPU(s), {resources.mem_mb} MB, {resources.runtime} min)"
    shell:
        "OMP_NUM_THREADS={threads} vlmswap figure2 --cell '{wildcards.cell}' --checkpoint {input.checkpoints} "
        "--llm {input.llm} --model {params.model} --index {input.index} --eval {input.eval} --out {output} "
        "2>&1 | tee {log}"


rule figure2_figure:
    localrule: True
    input:
        [f"{OUT}/diagnostics/figure2/{c}.json" for c in diagnostic_cells("figure2")],
    output:
        f"{OUT}/diagnostics/figure2.png",
    log:
        f"{LOGS}/figure2.log",
    conda:
        "../envs/vlmswap.yaml"
    message:
        "Figure 2: boxes and token-region similarity, cells side by side"
    shell:
        "vlmswap figure2-figure --inputs {input} --out-png {output} 2>&1 | tee {log}"
