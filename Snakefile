# vlmswap: which vision encoder should a VLM use? Controlled backbone swaps, end to end.
#
#   snakemake --cores 2                                          # the mini study (config/mini.yaml)
#   snakemake -n --configfile config/experiments.yaml            # preview the paper grid
#   snakemake --profile slurm --configfile config/experiments.yaml              # the paper grid on SLURM
#   snakemake results/paper/tables/table-1.md --profile slurm --configfile config/experiments.yaml
#   snakemake -s /path/to/vlmswap/Snakefile --directory /scratch/work --configfile study.yaml ...  # anywhere
import os

from snakemake.utils import min_version

min_version("9.0")

# The embedded default is the mini study. A --configfile replaces it (it is not merged into it).
# (resolved against this file's folder, so `-s /path/to/Snakefile` works from any directory)
# Loaded whenever no --configfile is given, --config alone included: common.smk then names the file
# the rules read and why an override does not reach them.
if not workflow.configfiles:

    configfile: os.path.join(workflow.basedir, "config", "mini.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/preflight.smk"
include: "workflow/rules/fetch.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/diagnostics.smk"
include: "workflow/rules/report.smk"


# `snakemake --report report.html`: tables, findings, figures and each cell's provenance
report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        all_targets(),
        report_targets(),
