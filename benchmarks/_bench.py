"""Shared helpers of the benchmark scripts: machine description, running the workflow, reading the
Snakemake ``benchmark:`` TSVs, and a report that is printed and saved at the same time.

Not a benchmark itself; imported by ``model_level_mnist.py`` and ``sample_level_mnist.py`` (both
put this directory on ``sys.path`` when run as ``python benchmarks/<script>.py``).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MNIST = (REPO / ".." / "shared" / "data" / "mnist").resolve()


def has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def machine_lines() -> list[str]:
    """CPU model, cores, memory, Python / torch / Snakemake versions and the CUDA device if any."""
    import snakemake
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
        mem = f"{mem_kb / 2**20:.1f} GiB"
    except (OSError, StopIteration):
        mem = "unknown"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only)"
    return [
        f"CPU          : {cpu}",
        f"cores        : {usable} usable ({os.cpu_count()} online), load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()),
        f"memory       : {mem}",
        f"CUDA device  : {gpu}",
        f"python       : {platform.python_version()} ({platform.system()} {platform.release()})",
        f"torch        : {torch.__version__} (CUDA build {torch.version.cuda or 'none'})",
        f"snakemake    : {snakemake.__version__}",
    ]


def fresh_workdir(workdir: Path, resume: bool) -> None:
    """Create ``workdir``; unless ``resume``, delete the outputs of an earlier run in it (only the
    workflow's own folders, so every benchmark TSV read afterwards belongs to this run). A resumed
    run redoes the killed run's half-written jobs (the default profile's ``rerun-incomplete``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if not resume:
        for name in ("results", "logs", ".snakemake"):
            shutil.rmtree(workdir / name, ignore_errors=True)
    else:  # a resumed run follows one that may have been killed: drop its stale lock
        shutil.rmtree(workdir / ".snakemake" / "locks", ignore_errors=True)


def write_config(cfg: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def run_workflow(workdir: Path, configfile: Path, cores: int, log: Callable[[str], None]) -> float:
    """Run the repository's Snakefile in ``workdir`` with ``configfile``; return the wall seconds.

    Snakemake's own output goes to ``workdir/snakemake.log`` (its tail is printed on failure).
    """
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(configfile),
        "--cores",
        str(cores),
    ]
    log("command      : " + " ".join(cmd))
    out = workdir / "snakemake.log"
    t0 = time.perf_counter()
    with out.open("w") as fh:
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
    seconds = time.perf_counter() - t0
    if rc != 0:
        tail = out.read_text().splitlines()[-40:]
        raise SystemExit(f"snakemake failed (exit {rc}); last lines of {out}:\n" + "\n".join(tail))
    return seconds


def stage_of(rel: Path, part: str, classify: Callable[[Path], str | None]) -> str | None:
    """The stage of a benchmark TSV (``rel``: its path relative to results/benchmarks) of the
    ``part`` (model_level or sample_level) a benchmark times: prepare_data, ``report`` for the
    collection, ``classify(rel)`` for the part's own jobs, None for what the benchmark skips."""
    if rel.parts[0] == "prepare_data":
        return "prepare_data"
    if rel.parts[0] != part:
        return None
    if rel.stem == "collect":
        return "report"
    return classify(rel)


def read_benchmarks(workdir: Path, stage_of: Callable[[Path], str | None]) -> pd.DataFrame:
    """One row per ``benchmark:`` TSV under ``workdir/results/benchmarks`` with its stage name.

    ``stage_of`` maps a TSV path (relative to results/benchmarks) to a stage, or None to skip it.
    """
    root = workdir / "results" / "benchmarks"
    rows = []
    for tsv in sorted(root.rglob("*.tsv")):
        rel = tsv.relative_to(root)
        stage = stage_of(rel)
        if stage is None:
            continue
        b = pd.read_csv(tsv, sep="\t")
        rows.append(
            {
                "stage": stage,
                "job": str(rel.with_suffix("")),
                "seconds": float(b["s"].mean()),
                "max_rss_mb": pd.to_numeric(b["max_rss"], errors="coerce").max(),
                "runs": len(b),
            }
        )
    return pd.DataFrame(rows, columns=["stage", "job", "seconds", "max_rss_mb", "runs"])


def stage_table(bench: pd.DataFrame, stages: list[str]) -> list[str]:
    """Per-stage sums (jobs, total, mean, max) followed by every job's own line."""
    lines = [
        f"{'stage':<28} {'jobs':>4} {'sum s':>9} {'mean s':>8} {'max s':>8} {'max RSS MB':>11}"
    ]
    found = list(dict.fromkeys(bench["stage"]))
    for st in [*stages, *(st for st in found if st not in stages)]:
        g = bench[bench["stage"] == st]
        if g.empty:
            if not st.startswith("fit_network:"):  # a network kind a run may not have
                lines.append(f"{st:<28} {0:>4} {'(no benchmark TSV)':>28}")
            continue
        lines.append(
            f"{st:<28} {len(g):>4} {g['seconds'].sum():>9.1f} {g['seconds'].mean():>8.1f} "
            f"{g['seconds'].max():>8.1f} {g['max_rss_mb'].max():>11.0f}"
        )
    lines.append(f"{'all jobs':<28} {len(bench):>4} {bench['seconds'].sum():>9.1f}")
    lines.append("")
    lines.append("per job:")
    for _, r in bench.sort_values(["stage", "job"]).iterrows():
        lines.append(
            f"  {r['stage']:<28} {r['seconds']:>8.1f} s {r['max_rss_mb']:>7.0f} MB  {r['job']}"
        )
    return lines


def start_benchmark(
    args, config: dict, title: str, preset: str, settings: str
) -> tuple[Report, Path]:
    """The part every benchmark's ``main`` shares: check ``args.data``, prepare ``args.workdir``,
    write ``config`` there, print the header (title, machine, preset, settings), run the workflow
    and print its wall time. Returns the report and the resolved work directory.

    With ``args.report_only`` the workflow is not run: the report is that of the results already
    in the work directory (made by an earlier run, or by a Snakemake command of your own there
    with its ``bench-config.yaml``), which stay as they are."""
    work = args.workdir.resolve()
    cfg_path = work / "bench-config.yaml"
    report_only = getattr(args, "report_only", False)
    if report_only and not (work / "results").is_dir():
        raise SystemExit(f"--report-only: {work} holds no results of an earlier run")
    if not report_only:
        if not args.data.exists():
            raise SystemExit(f"--data {args.data}: not found (a data directory or archive)")
        fresh_workdir(work, args.resume)
        write_config(config, cfg_path)

    log = Report()
    log("=" * 100)
    log(f"poisondetect benchmark: {title}")
    log("=" * 100)
    for line in machine_lines():
        log(line)
    log(f"preset       : {preset}")
    log(f"settings     : {settings}")
    log(f"work dir     : {work}")
    log(f"config       : {cfg_path}")
    if report_only:
        log("workflow     : not run (--report-only: the results already in the work directory)")
        kept = yaml.safe_load(cfg_path.read_text()) if cfg_path.is_file() else None
        if kept != yaml.safe_load(yaml.safe_dump(config, sort_keys=False)):
            log(
                f"warning      : {cfg_path} differs from this command's settings: the results "
                "are those of the work directory's config, not of the settings above"
            )
    else:
        wall = run_workflow(work, cfg_path, args.cores, log)
        log(f"workflow wall time: {wall:.1f} s ({wall / 60:.1f} min) with --cores {args.cores}")
    log("")
    return log, work


def finish_benchmark(
    log: Report,
    work: Path,
    stage_of: Callable[[Path], str | None],
    stages: list[str],
    collect_rule: str,
    t_start: float,
) -> None:
    """The shared end: the per-stage wall times, the benchmark's total time, the saved report."""
    log("Stage wall times (Snakemake benchmark TSVs; jobs of a stage may run in parallel):")
    for line in stage_table(read_benchmarks(work, stage_of), stages):
        log(line)
    log(f"(report = {collect_rule}; the tables / figure rules have no benchmark directive)")
    log("")
    total = time.perf_counter() - t_start
    log(f"total wall time of this benchmark: {total:.1f} s ({total / 60:.1f} min)")
    log.save(work / "benchmark_report.txt")


class Report:
    """Lines printed as they come and saved to a file at the end."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def save(self, path: Path) -> None:
        path.write_text("\n".join(self.lines) + "\n")
        print(f"(report saved to {path})")


def pts(share: float) -> str:
    """A difference of two accuracies (shares) in signed percentage points, never "-0.00"."""
    return f"{round(100 * share, 2) + 0.0:+.2f}"


def fmt(v, spec: str = ".4f", none: str = "-") -> str:
    """Format a number, or ``none`` for a missing value."""
    if v is None or (isinstance(v, float) and v != v):
        return none
    return format(v, spec)
