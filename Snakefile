# Detecting data-poisoning attacks with auto-encoders.
#   Model level : El Moadine, Coatrieux, Bellafqira (rules/model_level.smk)
#   Sample level: Razmi, Xiong, CAE / CAE+ (rules/sample_level.smk)
# Run:  snakemake --cores all            (default config: the embedded digits data set)
#       snakemake --report results/report.zip
import os
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

# The package beside this Snakefile (a checkout, or a module from a local path) comes first, for
# planning and for the jobs' own Python processes; a module from a git URL needs the package
# installed (pip install, see the README).
_HERE = Path(str(workflow.current_basedir))
if (_HERE / "poisondetect" / "__init__.py").is_file():
    sys.path.insert(0, str(_HERE))
    os.environ.update(  # set here for the jobs, not read from the user
        PYTHONPATH=os.pathsep.join(
            [str(_HERE), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
    )
try:
    from poisondetect.config import check_config_file
    from poisondetect.logs import print_conclusions
except ImportError as e:
    raise WorkflowError(
        "the poisondetect package is not importable; install it where Snakemake runs: "
        "pip install 'poisondetect @ git+<this workflow's repository URL>@<the same tag>'"
    ) from e

# A config.yaml that is not UTF-8 or not YAML (or a FIFO, over 1 MB, with YAML aliases) stops here
# with one line naming it (exit status 2), not with Snakemake's traceback. A --configfile is read
# by Snakemake itself, before this line: `poisondetect run --configfile F ...` checks it first.
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
