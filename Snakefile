# Detecting data-poisoning attacks with auto-encoders.
#   Model level : El Moadine, Coatrieux, Bellafqira (rules/model_level.smk)
#   Sample level: Razmi, Xiong, CAE / CAE+ (rules/sample_level.smk)
# Run:  snakemake --cores all            (default config: the embedded digits data set)
#       snakemake --report results/report.zip
import sys

from snakemake.utils import min_version

min_version("9.0")

sys.path.insert(0, workflow.basedir)
from poisondetect.config import check_config_file  # noqa: E402
from poisondetect.logs import print_conclusions  # noqa: E402

# A config.yaml that is not UTF-8 or not YAML stops here with one line naming it (exit status 2),
# not with Snakemake's traceback. (A --configfile is read by Snakemake itself, before this line.)
check_config_file("config.yaml")


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


# The terminal shows Snakemake's progress and, at the end, the conclusions (the jobs' details are
# in their logs under logs/; POISONDETECT_VERBOSE=1 shows them on the terminal too).
onsuccess:
    print_conclusions()
