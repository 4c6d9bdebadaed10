"""The sample-level part (Razmi & Xiong, CAE / CAE+), one module per stage family (called by
scripts/): ``poisoning`` (the rounds and their poisons), ``networks`` (the RAEs / CAEs the detectors
are made of), ``filters`` (the detectors' fits and filtering), ``collection`` (the grid's table and
conclusions) and ``analyses`` (the tidy tables the figures draw). This ``__init__`` imports
nothing, so planning the workflow stays light."""
