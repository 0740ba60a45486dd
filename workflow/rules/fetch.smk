# Inputs of training and evaluation: backbone checkpoints, the LLM, the instruction set, the
# benchmarks. In the mini study the workflow first builds them on the generated mini world; the
# fetch rules then take them exactly as they take official downloads.
#
# Every official file an index is derived from (a benchmark's annotation files, the instruction
# json) is a declared input of its preparation, so editing one reruns exactly that preparation and
# the evaluations (or trainings) that read it. The registry's benchmark classes list those files.


if IS_MINI:

    rule mini_world:
        output:
            world_flag(),
            # the files the preparations are derived from, declared so that they are tracked
            instruct_paths()[0],
            sorted({f for b in STUDY.benchmarks for f in _mini_index_sources(b)}),
        input:
            preflight=f"{RES}/preflight.json",
        params:
            out=lambda wc, output: os.path.dirname(output[0]),
            mini=STUDY.mini.written,
        log:
            f"{LOGS}/mini_world.log",
        conda:
            "../envs/vlmswap.yaml"
        message:
            "generate the mini world"
        shell:
            "vlmswap mini-world --out {params.out} 2>&1 | tee {log}"

    rule pretrain_mini:
        input:
            world_flag(),
        output:
            f"{RES}/pretrained/{{backbone}}@{{objective}}.pth",
        params:
            world=lambda wc, input: os.path.dirname(input[0]),
            spec=pretrain_spec,
        threads: 2
        # every backbone first: the long training jobs then pack onto the cores without waiting
        # behind a pretraining that one of them needs
        priority: 10
        log:
            f"{LOGS}/pretrain_mini/{{backbone}}@{{objective}}.log",
        conda:
            "../envs/vlmswap.yaml"
        message:
            "pretrain mini backbone {wildcards.backbone} for {wildcards.objective}"
        shell:
            "OMP_NUM_THREADS={threads} vlmswap pretrain-mini --backbone {wildcards.backbone} "
            "--objective {wildcards.objective} --world {params.world} --out {output} 2>&1 | tee {log}"

    rule build_mini_llm:
        input:
            world_flag(),
        output:
            directory(f"{RES}/llm-build"),
        params:
            world=lambda wc, input: os.path.dirname(input[0]),
            source=canonical_json({"source": STUDY.llm.source, "seed": STUDY.seed}),
        log:
            f"{LOGS}/build_mini_llm.log",
        conda:
            "../envs/vlmswap.yaml"
        message:
            "build the mini LLM and its tokenizer"
        shell:
            "vlmswap build-mini-llm --world {params.world} --out {output} 2>&1 | tee {log}"


rule fetch_backbone:
    localrule: True  # downloads run on the submit host (compute nodes are often offline)
    input:
        preflight=f"{RES}/preflight.json",
        built=lambda wc: _built_input(
            STUDY.checkpoint_source(wc.backbone, wc.objective), f"{RES}/pretrained/{wc.backbone}@{wc.objective}.pth"
        ),
    output:
        checkpoint_file("{backbone}", "{objective}"),
    params:
        source=lambda wc: STUDY.checkpoint_source(wc.backbone, wc.objective),
        built=lambda wc, input: f"--input {input.built}" if input.built else "",
    retries: 2
    log:
        f"{LOGS}/fetch_backbone/{{backbone}}@{{objective}}.log",
    conda:
        "../envs/vlmswap.yaml"
    message:
        "fetch checkpoint {wildcards.backbone} ({wildcards.objective})"
    shell:
        "vlmswap fetch-backbone --backbone {wildcards.backbone} --objective {wildcards.objective} "
        "{params.built} --out {output} 2>&1 | tee {log}"


rule fetch_llm:
    localrule: True  # downloads run on the submit host (compute nodes are often offline)
    input:
        preflight=f"{RES}/preflight.json",
        built=_built_input(STUDY.llm.source, f"{RES}/llm-build"),
    output:
        directory(f"{RES}/llm"),
    params:
        source=STUDY.llm.source,
        built=lambda wc, input: f"--input {input.built}" if input.built else "",
    retries: 2
    log:
        f"{LOGS}/fetch_llm.log",
    conda:
        "../envs/vlmswap.yaml"
    message:
        f"fetch the LLM ({STUDY.llm.id})"
    shell:
        "vlmswap fetch-llm {params.built} --out {output} 2>&1 | tee {log}"


if not IS_MINI:

    rule fetch_instruct:
        localrule: True  # downloads run on the submit host (compute nodes are often offline)
        input:
            preflight=f"{RES}/preflight.json",
        output:
            instruct_paths()[0],
        params:
            source=STUDY.instruct.source,
            files=list(STUDY.instruct.files),
        retries: 2
        log:
            f"{LOGS}/fetch_instruct.log",
        conda:
            "../envs/vlmswap.yaml"
        message:
            f"fetch the instruction set ({STUDY.instruct.id}); its image folders are placed beside it"
        shell:
            "vlmswap fetch-instruct --out {output} 2>&1 | tee {log}"


rule prepare_instruct:
    input:
        json=instruct_paths()[0],
        world=[world_flag()] if IS_MINI else [],
    output:
        f"{RES}/prepared/instruct.json",
    params:
        image_root=lambda wc, input: os.path.dirname(input.json),
    log:
        f"{LOGS}/prepare_instruct.log",
    conda:
        "../envs/vlmswap.yaml"
    message:
        "check the instruction set and every image it names"
    shell:
        "vlmswap prepare-instruct --json {input.json} --image-root {params.image_root} "
        "--out {output} 2>&1 | tee {log}"


if not IS_MINI:

    rule fetch_benchmark:
        localrule: True  # downloads run on the submit host (compute nodes are often offline)
        input:
            preflight=f"{RES}/preflight.json",
        output:
            f"{RES}/data/{{benchmark}}.fetched.json",
        params:
            files=lambda wc: list(STUDY.benchmark_inputs[wc.benchmark].files),
            dest=lambda wc: benchmark_root(wc.benchmark),
        retries: 2
        log:
            f"{LOGS}/fetch_benchmark/{{benchmark}}.log",
        conda:
            "../envs/vlmswap.yaml"
        message:
            "fetch the official files of {wildcards.benchmark}"
        shell:
            "vlmswap fetch-benchmark --benchmark {wildcards.benchmark} --dest {params.dest} "
            "--out {output} 2>&1 | tee {log}"


rule prepare_benchmark:
    input:
        _index_inputs,
    output:
        f"{RES}/prepared/{{benchmark}}.json",
    params:
        root=lambda wc: benchmark_root(wc.benchmark),
        spec=lambda wc: config["benchmarks"][wc.benchmark],
    log:
        f"{LOGS}/prepare_benchmark/{{benchmark}}.log",
    conda:
        "../envs/vlmswap.yaml"
    message:
        "index benchmark {wildcards.benchmark}"
    shell:
        "vlmswap prepare-benchmark --benchmark {wildcards.benchmark} --root {params.root} "
        "--out {output} 2>&1 | tee {log}"
