# The researcher's view of a study: findings, figures and each cell's provenance, every one a
# report() output, so that `snakemake --report report.html` gathers them with the tables into one
# HTML file. Cheap, so they run on the submit host even under the SLURM profile.

rule findings:
    localrule: True
    input:
        all_eval_groups(),
    output:
        md=f"{OUT}/findings.md",
        json=f"{OUT}/findings.json",
        html=report(f"{OUT}/findings.html", caption="../report/findings.rst", category="2. Findings",
                    labels={"page": "findings"}),
    params:
        results=lambda wc, output: os.path.dirname(output.md),
        spec=analysis_spec(),
    log:
        f"{LOGS}/findings.log",
    conda:
        "../envs/vlmswap.yaml"
    message:
        "the paper's observations, computed on this study"
    shell:
        "vlmswap findings --results {params.results} --out-md {output.md} "
        "--out-json {output.json} --out-html {output.html} 2>&1 | tee {log}"


rule figures:
    localrule: True
    input:
        evals=all_eval_groups(),
        losses=[f"{OUT}/models/{c}/loss.jsonl" for c in STUDY.cell_ids],
    output:
        [report(f, caption="../report/figures.rst", category="3. Figures", subcategory=subcategory,
                labels={"figure": Path(f).relative_to(f"{OUT}/figures").with_suffix("").as_posix()})
         for kind, subcategory in (("study", "study"), ("correlation", "benchmark correlations"),
                                   ("tables", "ours vs paper per table"))
         for f in figure_files(kind)],
        [f.removesuffix(".png") + ".pdf" for k in ("study", "correlation", "tables") for f in figure_files(k)],
    params:
        results=lambda wc, output: os.path.dirname(os.path.dirname(output[0])),  # results/<study>/figures/...
        out=lambda wildcards, output: str(Path(output[0]).parent),  # figures/, where loss.png goes
        spec=analysis_spec(),
    log:
        f"{LOGS}/figures.log",
    conda:
        "../envs/vlmswap.yaml"
    message:
        "figures: loss curves, ours vs paper, score vs size and IN1K accuracy, correlation heatmaps"
    shell:
        "vlmswap figures --results {params.results} --out-dir {params.out} 2>&1 | tee {log}"


rule provenance:
    localrule: True
    input:
        summary=f"{OUT}/models/{{cell}}/train.json",
        evals=lambda wc: eval_groups([wc.cell], STUDY.benchmarks),
    output:
        report(f"{OUT}/provenance/{{cell}}.html", caption="../report/provenance.rst", category="4. Provenance",
               labels={"cell": "{cell}"}),
    params:
        results=lambda wc, input: os.path.dirname(os.path.dirname(os.path.dirname(input.summary))),
        resources=RES,
    log:
        f"{LOGS}/provenance/{{cell}}.log",
    conda:
        "../envs/vlmswap.yaml"
    message:
        "provenance page of {wildcards.cell}"
    shell:
        "vlmswap provenance --cell {wildcards.cell} --results {params.results} "
        "--resources {params.resources} --out {output} 2>&1 | tee {log}"
