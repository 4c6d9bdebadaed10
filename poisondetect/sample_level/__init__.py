"""The sample-level part (Razmi & Xiong, CAE / CAE+): ``stages`` (rounds, attacks, detector fits
and filtering, collection) and ``analyses`` (the tidy tables the figures draw). This ``__init__``
imports nothing, so planning the workflow stays light."""
