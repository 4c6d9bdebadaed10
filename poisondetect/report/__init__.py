"""Tables (CSV + LaTeX booktabs) and seaborn figures (PNG + PDF): ``model_level`` and
``sample_level``, with what they share in ``common``. This ``__init__`` imports nothing."""
