"""What to run after an interrupted ``--forcerun`` (README, "Partial reruns").

Ctrl-C during ``snakemake --forcerun finetune_attack`` deletes the outputs of the attack job that
was running. A plain ``snakemake`` (even with ``--rerun-incomplete``) then says "Nothing to be done":
Snakemake rebuilds a missing file only when a job it has to run needs it, and the tables made before
the interruption still stand. What works, and what the README says: repeat the interrupted command.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

from conftest import planned_jobs, snakemake, snakemake_cmd

CELL = "results/model_level/digits/cnn/standard/seed0"
ATTACKS = ("flip_f50_e2", "pattern_f50_e2")  # attack populations: one job each (per_population)
MODELS = [f"{a}_r{r}" for a in ATTACKS for r in range(2)]


def test_interrupted_forcerun_is_finished_by_repeating_it(tiny_run, tmp_path):
    work = tmp_path / "copy"
    shutil.copytree(tiny_run, work, symlinks=True)
    logs = [work / f"logs/model_level/digits/cnn/standard/seed0/finetune_{a}.log" for a in ATTACKS]
    for log in logs:
        log.unlink()  # wait for the forced jobs' own logs
    cmd = snakemake_cmd(work, "--cores", "1", "--forcerun", "finetune_attack")
    console = tmp_path / "interrupted.log"
    with console.open("w") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # a shell without job control starts background commands (`pytest ... &`) with SIGINT
            # ignored, which every child inherits: give Snakemake the terminal's default back
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            if any(log.exists() and "running on" in log.read_text() for log in logs):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("no finetune_attack job started")
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal: the whole process group
        assert proc.wait(timeout=120) != 0, console.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    models = work / CELL / "models"
    missing = [m for m in MODELS if not (models / f"{m}.safetensors").exists()]
    assert missing, "the interrupted job's model should have been deleted"
    # what the README warns about: a plain run, with or without --rerun-incomplete, does not see it
    assert planned_jobs(snakemake(work, "-n")) == {}
    assert planned_jobs(snakemake(work, "-n", "--rerun-incomplete")) == {}
    # the recipe: repeat the interrupted command; it ends with every model back and nothing to do
    snakemake(work, "--forcerun", "finetune_attack")
    assert all((models / f"{m}.safetensors").exists() for m in MODELS)
    assert planned_jobs(snakemake(work, "-n")) == {}
    # the other recipe: ask for a missing file by name, then a plain run updates what uses it
    (models / "flip_f50_e2_r0.safetensors").unlink()
    jobs = planned_jobs(snakemake(work, "-n", f"{CELL}/models/flip_f50_e2_r0.safetensors"))
    assert jobs == {"finetune_attack": 1}
