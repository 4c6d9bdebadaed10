"""A console a person reads (issue 16): job details go to the job logs, the terminal gets warnings,
errors and, at the end of a run, the conclusions."""

from __future__ import annotations

import logging

import pytest

from poisondetect.logs import (
    CONCLUSION_FILES,
    REPORT_HINT,
    VERBOSE_ENV,
    conclusions,
    run_logged,
    setup_logging,
)


@pytest.fixture
def clean_logging():
    yield
    logging.getLogger().handlers.clear()


def _stage():
    log = logging.getLogger("poisondetect.classifiers")
    for epoch in range(3):
        log.info("epoch %d: loss 0.5", epoch)
    log.warning("the learning rate looks large")
    return "done"


def test_info_goes_to_the_log_file_only(tmp_path, capfd, monkeypatch, clean_logging):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    assert run_logged([str(tmp_path / "job.log")], _stage) == "done"
    err = capfd.readouterr().err
    assert "epoch" not in err and "running on" not in err
    assert err.count("\n") == 1 and "WARNING" in err and "learning rate" in err
    text = (tmp_path / "job.log").read_text()
    assert text.count("epoch") == 3 and "running on" in text and "WARNING" in text


@pytest.mark.parametrize("value", ["1", "yes"])
def test_verbose_shows_info_on_the_terminal(tmp_path, capfd, monkeypatch, clean_logging, value):
    monkeypatch.setenv(VERBOSE_ENV, value)
    run_logged([str(tmp_path / "job.log")], _stage)
    assert capfd.readouterr().err.count("epoch") == 3


def test_errors_still_reach_the_terminal_in_one_line(tmp_path, capfd, monkeypatch, clean_logging):
    from poisondetect.errors import PoisonDetectError

    monkeypatch.delenv(VERBOSE_ENV, raising=False)

    def bad():
        raise PoisonDetectError("data/x.npz: not an .npz file;\n  save it with numpy.savez")

    with pytest.raises(SystemExit) as e:
        run_logged([str(tmp_path / "job.log")], bad)
    assert e.value.code == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.rstrip().endswith(
        "ERROR poisondetect: data/x.npz: not an .npz file; save it with numpy.savez"
    )


def test_setup_logging_without_a_file_keeps_warnings(capfd, monkeypatch, clean_logging):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    setup_logging()
    logging.getLogger("poisondetect").info("hidden")
    logging.getLogger("poisondetect").error("shown")
    err = capfd.readouterr().err
    assert "shown" in err and "hidden" not in err


def test_conclusions_block_prints_whichever_files_exist(tmp_path):
    assert conclusions(root=tmp_path).splitlines() == [
        "No conclusions file was written by this run",
        REPORT_HINT,
    ]
    ml, sl = (tmp_path / name for name in CONCLUSION_FILES)
    sl.parent.mkdir(parents=True)
    sl.write_text("digits_1v7: CAE+ F1 0.91 (contaminated training)\n\n")
    text = conclusions(root=tmp_path)
    assert text.splitlines() == [
        "Conclusions",
        f"{CONCLUSION_FILES[1]}:",
        "  digits_1v7: CAE+ F1 0.91 (contaminated training)",
        REPORT_HINT,
    ]
    ml.parent.mkdir(parents=True)
    ml.write_text("digits/cnn/standard flip 50% e2: best ae_mean AUROC 1.00\n")
    lines = conclusions(root=tmp_path).splitlines()
    assert lines[1] == f"{CONCLUSION_FILES[0]}:" and lines[3] == f"{CONCLUSION_FILES[1]}:"
    assert "snakemake --report results/report.zip" in lines[-1]
