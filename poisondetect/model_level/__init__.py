"""The model-level part (El Moadine et al.): one module per family of stages, each stage called by
one script in ``scripts/``.

- ``cell``: what the stages of one cell (dataset x arch x scenario x seed) share: the seeds of its
  stages, the training images M sees, the trigger set.
- ``finetunes``: train the genuine model M; fine-tune it into the honest and attacked populations
  (``poisondetect.population`` names them); evaluate each model and dump its penultimate
  activations on the trigger set.
- ``scoring``: fit the auto-encoder on M's activations, its per-image errors for every model, and
  every configured detector (``poisondetect.detectors.registry``) fitted and scored over the cell.
- ``calibration``: thresholds from the honest fitting replicates; the cell's scores table, the
  paper's detection table, and the detector bundle that ``audit`` uses.
- ``collection``: the tidy tables of the whole grid and ROC over populations; the conclusions.
- ``audit``: one suspicious checkpoint against a detector bundle (the ``audit`` command).

Every stage reads its inputs, computes, and writes its outputs atomically. This ``__init__``
imports nothing, so planning the workflow stays light.
"""
