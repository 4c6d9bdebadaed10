"""Detect data-poisoning attacks with auto-encoders.

Two parts share this package: model-level detection (El Moadine, Coatrieux, Bellafqira) and
sample-level detection with CAE+ (Razmi, Xiong). See docs/architecture.md for the layout.
"""

from poisondetect.errors import PoisonDetectError

__all__ = ["PoisonDetectError"]
__version__ = "0.1.0"
