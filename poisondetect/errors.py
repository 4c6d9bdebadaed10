"""The one exception type for bad input: its message names the problem and how to fix it."""


class PoisonDetectError(ValueError):
    """Raised for bad input (config, data, checkpoints, cached files) with an actionable message."""
