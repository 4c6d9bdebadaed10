"""`snakemake -n` plans the paper-scale grids as they are (only the data paths are placeholders)."""

from __future__ import annotations

import shutil

import pytest
from conftest import REPO, planned_jobs, snakemake

from poisondetect.detectors import registry

pytestmark = pytest.mark.workflow


@pytest.fixture
def workdir(tmp_path):
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")  # merged under, as in a checkout
    return tmp_path


def test_paper_cifar10_grid(workdir):
    jobs = planned_jobs(snakemake(workdir, "-n", configfile=REPO / "configs/paper-cifar10.yaml"))
    # every registered detector but those that learn from shadow attacks (none in this config)
    shadowless = [n for n in registry.names("model") if not registry.get("model", n).uses_shadow]
    archs, scenarios, detectors = 5, 2, len(shadowless)
    cells = archs * scenarios
    honest = 5 * (3 + 4)  # 3 variants in the standard scenario, 4 with unseen data in new_data
    attacked = 2 * 2 * 2 * 5  # kinds x fractions x epochs x replicates, per cell
    assert jobs["prepare_data"] == 1
    assert jobs["train_genuine"] == cells
    assert jobs["finetune"] == archs * honest + cells * attacked  # one job per model
    assert jobs["fit_autoencoder"] == cells and jobs["ae_errors"] == cells
    assert jobs["score_detector"] == cells * detectors and jobs["calibrate"] == cells
    assert jobs["model_level_figure"] == cells and jobs["model_level_roc_figures"] == cells
    assert not any(rule.startswith(("poison", "fit_filter", "make_rounds")) for rule in jobs)


def test_paper_cae_grid(workdir):
    jobs = planned_jobs(snakemake(workdir, "-n", configfile=REPO / "configs/paper-cae.yaml"))
    # the contamination sweep 0, 5, 10, 20, 30 % (the paper's abstract: up to 30 %)
    tasks, attacks, counts, seeds, detectors, train_on = (
        5,
        4,
        5,
        3,
        len(registry.names("sample")),
        2,
    )
    assert jobs["prepare_data"] == 3  # MNIST, Fashion-MNIST, CIFAR-10
    assert jobs["make_rounds"] == tasks * seeds
    assert jobs["poison_rounds"] == tasks * attacks * counts * seeds
    assert jobs["fit_filter"] == tasks * attacks * counts * seeds * detectors * train_on
    # each cell's networks fitted once: an RAE and a CAE (CAE+, RAE, CAE), MagNet's two
    assert jobs["fit_network"] == tasks * attacks * counts * seeds * 4 * train_on
    assert jobs["sample_level_clean_vs_contaminated"] == tasks  # Fig. 7: clean vs contaminated
    assert "train_genuine" not in jobs
