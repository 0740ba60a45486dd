# vlmswap: which vision encoder should a VLM use? Controlled backbone swaps, end to end.
#
#   snakemake --cores 2                                        # the mini study (config/mini.yaml)
#   snakemake -n --configfile config/experiments.yaml          # preview the paper grid
#   snakemake --profile slurm                                  # the paper grid on a SLURM cluster
#   snakemake results/paper/tables/table-1.md --profile slurm  # one table, and only what it needs
from snakemake.utils import min_version

min_version("9.0")

# The embedded default is the mini study. A --configfile replaces it (it is not merged into it).
if not config:

    configfile: "config/mini.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/fetch.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/report.smk"


# `snakemake --report report.html`: tables, findings, figures and each cell's provenance
report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        all_targets(),
        report_targets(),
