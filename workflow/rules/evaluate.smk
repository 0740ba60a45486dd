# Evaluation: one job per cell and column group (the VQA benchmarks, the localization benchmarks),
# so the model is loaded once for all the benchmarks a table needs, and a VQA-only table plans no
# localization run. Each benchmark keeps its own predictions (resumable), result contract
# {OUT}/evals/{cell}/{benchmark}.json and log; the job's {group}.group.json lists the sha256 of
# each result and is what the aggregating rules depend on. Helpers live in common.smk.

for _group, _benchmarks in EVAL_GROUPS.items():

    rule:
        name:
            f"evaluate_{_group}"
        input:
            model=f"{OUT}/models/{{cell}}/model.safetensors",
            checkpoints=cell_checkpoints,
            llm=f"{RES}/llm",
            index=[f"{RES}/prepared/{b}.json" for b in _benchmarks],
        output:
            results=[eval_json("{cell}", b) for b in _benchmarks],
            group=eval_group_json("{cell}", _group),
        params:
            model=lambda wc, input: os.path.dirname(input.model),
            eval=canonical_json(eval_settings(STUDY)),  # settings -> predictions
        threads: 1
        resources:
            **eval_resources(),
        log:
            f"{LOGS}/evaluate/{{cell}}/{_group}.log",
        conda:
            "../envs/vlmswap.yaml"
        message:
            f"evaluate {{wildcards.cell}} on {', '.join(_benchmarks)} "
            "({resources.eval_gpus} GPU(s), {resources.mem_mb} MB, {resources.runtime} min)"
        shell:
            "OMP_NUM_THREADS={threads} vlmswap evaluate --gpus {resources.eval_gpus} --cell '{wildcards.cell}' "
            "--checkpoint {input.checkpoints} --llm {input.llm} --model {params.model} --index {input.index} "
            "--out {output.results} --group-record {output.group} 2>&1 | tee {log}"
