# Before any download or job: inputs placed by hand, disk, credentials (vlmswap.preflight).
# Every fetch and build rule takes its report as an input, so a missing hand-placed file stops
# the run here, not after hours of downloads.


rule preflight:
    localrule: True
    output:
        f"{RES}/preflight.json",
    params:
        hand=canonical_json(config.get("placed_by_hand", [])),
        resources=lambda wc, output: os.path.dirname(output[0]),
    log:
        f"{LOGS}/preflight.log",
    conda:
        "../envs/vlmswap.yaml"
    message:
        "preflight: hand-placed inputs, disk, credentials"
    shell:
        "vlmswap preflight --resources {params.resources} --out {output} 2>&1 | tee {log}; exit ${{PIPESTATUS[0]}}"
