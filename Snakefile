# Detecting data-poisoning attacks with auto-encoders.
#   Model level : El Moadine, Coatrieux, Bellafqira (rules/model_level.smk)
#   Sample level: Razmi, Xiong, CAE / CAE+ (rules/sample_level.smk)
# Run:  snakemake --cores all            (default config: the embedded digits data set)
#       snakemake --report results/report.zip
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/model_level.smk"
include: "rules/sample_level.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
