# Tables (one per paper table) and the benchmark x benchmark Pearson correlation over all cells.
# Cheap, so they run on the submit host even under the SLURM profile.


rule baselines:
    localrule: True
    input:
        f"{RES}/prepared/{{benchmark}}.json",
    output:
        f"{OUT}/baselines/{{benchmark}}.json",
    log:
        f"{LOGS}/baselines/{{benchmark}}.log",
    conda:
        "../envs/vlmswap.yaml"
    message:
        "score the trivial baseline of {wildcards.benchmark} (majority answer, fixed central box)"
    shell:
        "vlmswap baselines --benchmark {wildcards.benchmark} --index {input} --out {output} "
        "2>&1 | tee {log}"


rule table:
    localrule: True
    input:
        evals=table_inputs,
        baselines=table_baselines,
    output:
        csv=f"{OUT}/tables/{{table}}.csv",
        md=f"{OUT}/tables/{{table}}.md",
        tex=f"{OUT}/tables/{{table}}.tex",
        html=report(f"{OUT}/tables/{{table}}.html", caption="../report/table.rst", category="1. Tables",
                    labels={"table": "{table}"}),
    params:
        results=lambda wc, output: os.path.dirname(os.path.dirname(output.csv)),
        spec=table_spec,
    log:
        f"{LOGS}/table/{{table}}.log",
    conda:
        "../envs/vlmswap.yaml"
    message:
        "table {wildcards.table}"
    shell:
        "vlmswap table --table {wildcards.table} --results {params.results} "
        "--out-csv {output.csv} --out-md {output.md} --out-tex {output.tex} "
        "--out-html {output.html} 2>&1 | tee {log}"


rule correlation:
    localrule: True
    input:
        all_eval_groups(),
    output:
        csv=f"{OUT}/correlation.csv",
        png=f"{OUT}/correlation.png",
    params:
        results=lambda wc, output: os.path.dirname(output.csv),
    log:
        f"{LOGS}/correlation.log",
    conda:
        "../envs/vlmswap.yaml"
    message:
        "benchmark x benchmark Pearson correlation over all cells"
    shell:
        "vlmswap correlation --results {params.results} --out-csv {output.csv} "
        "--out-png {output.png} 2>&1 | tee {log}"
