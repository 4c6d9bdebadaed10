"""Outputs a researcher keeps: LaTeX tables that compile unchanged under booktabs, figures and
tables without time stamps, and a rerun of the workflow that writes the same bytes."""

from __future__ import annotations

import re
import shutil
import subprocess

import pandas as pd
import pytest
from conftest import snakemake

from poisondetect.report.common import latex_table

PDFLATEX = shutil.which("pdflatex")
DOCUMENT = r"""\documentclass{article}
\usepackage{booktabs}
\begin{document}
%s
\end{document}
"""


def _compiles(tex: str, tmp_path) -> None:
    (tmp_path / "t.tex").write_text(DOCUMENT % tex)
    proc = subprocess.run(
        [PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", "t.tex"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]


def _check_text(tex: str) -> None:
    """One header row between booktabs' rules, no cline or multirow, a caption and a label."""
    for rule in ("\\toprule", "\\midrule", "\\bottomrule"):
        assert tex.count(rule) == 1, rule
    assert "\\cline" not in tex and "\\multirow" not in tex and "\\hline" not in tex
    head = tex.split("\\toprule", 1)[1].split("\\midrule", 1)[0]
    assert head.count("\\\\") == 1  # exactly one header row
    assert "\\caption{" in tex and "\\label{" in tex


def test_latex_table_has_one_header_row_and_escapes_text(tmp_path):
    idx = pd.MultiIndex.from_tuples(
        [("digits", "cnn", 0), ("digits", "cnn", 1)], names=["dataset", "arch", "seed"]
    )
    cols = pd.MultiIndex.from_tuples([("flip", 3), ("optimal", 3)], names=["attack", "n_poison"])
    df = pd.DataFrame([[0.5, None], [0.25, 1.0]], index=idx, columns=cols)
    df[("note", "")] = ["a_b & 50%", "±1"]
    tex = latex_table(df, "A caption with 5\\%.", "tab:x")
    _check_text(tex)
    assert "a\\_b \\& 50\\%" in tex and "--" in tex and "0.25" in tex
    assert "flip 3" in tex and "dataset" in tex
    if PDFLATEX:
        _compiles(tex, tmp_path)


def test_every_table_of_the_workflow_is_clean_latex(tiny_run, tmp_path):
    tables = sorted((tiny_run / "results").rglob("*.tex"))
    assert len(tables) >= 6
    for path in tables:
        _check_text(path.read_text())
    if not PDFLATEX:
        pytest.skip("no pdflatex here: the tables' text was checked, not compiled")
    for path in tables:
        _compiles(path.read_text(), tmp_path)


def _results(run) -> dict:
    """Every result file of a run but the jobs' timing files, by path relative to the run."""
    return {
        p.relative_to(run): p
        for p in (run / "results").rglob("*")
        if p.is_file() and "benchmarks" not in p.parts
    }


# Rerun in the copy: every model-level job, and every job of one sample-level cell (its poisoning,
# the fit of every detector on each training set, one job each) with everything that collects
# them. The other cell's jobs are the same rules with other wildcards.
RERUN_CELL = "results/sample_level/digits_1v7/optimal"


def test_a_second_run_writes_the_same_bytes(tiny_run, tmp_path):
    """The tiny workflow's jobs run again in a copy of the finished run (another directory):
    every result file (tables, figures, checkpoints, dumps, bundles) is byte-identical; only the
    jobs' timing files differ. The copy has the model-level results and one sample-level cell
    deleted, so Snakemake remakes them and every table and figure downstream (each rule runs at
    least once; about half the jobs of a whole second run)."""
    run = tmp_path / "again"
    shutil.copytree(tiny_run, run, symlinks=True)
    first = _results(tiny_run)
    gone = [run / "results/model_level", run / RERUN_CELL]
    gone += [run / p for p in ("results/sample_level/analysis", "results/sample_level/figures")]
    for path in gone:
        assert path.is_dir(), path
        shutil.rmtree(path)
    proc = snakemake(run)
    ran = set(re.findall(r"^(?:local)?rule (\w+):", proc.stdout + proc.stderr, re.MULTILINE))
    assert {"train_genuine", "finetune_attack", "score_detector", "poison_rounds"} <= ran
    assert {"fit_filters", "collect_sample_level", "all"} <= ran
    second = _results(run)
    assert first.keys() == second.keys()
    differ = [str(rel) for rel, p in first.items() if p.read_bytes() != second[rel].read_bytes()]
    assert not differ, differ
    remade = [rel for rel, p in second.items() if p.stat().st_mtime > first[rel].stat().st_mtime]
    kinds = {p.suffix for p in remade}
    assert {".csv", ".tex", ".png", ".pdf", ".safetensors", ".parquet", ".json"} <= kinds
