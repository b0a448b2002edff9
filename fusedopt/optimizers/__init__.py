"""Public optimizer classes: hyperparameters, state and config; the math is elsewhere."""

from .adam import Adam, AdamW
from .base import Optimizer

__all__ = ["Optimizer", "Adam", "AdamW"]
