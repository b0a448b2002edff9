"""Public optimizer classes: hyperparameters, state and config; the math is elsewhere."""

from .adam import Adam, AdamW
from .base import Optimizer

__all__ = ["Optimizer", "Adam", "AdamW"]

# SGD, RMSprop, Adagrad, Adadelta
from .adadelta import Adadelta  # noqa: E402
from .adagrad import Adagrad  # noqa: E402
from .rmsprop import RMSprop  # noqa: E402
from .sgd import SGD  # noqa: E402

__all__ += ["SGD", "RMSprop", "Adagrad", "Adadelta"]


# Adamax, Nadam, Lion
from .adamax import Adamax  # noqa: E402
from .lion import Lion  # noqa: E402
from .nadam import Nadam  # noqa: E402

__all__ += ["Adamax", "Nadam", "Lion"]

# Dynamic loss scaling around any of them
from .loss_scale import LossScaleOptimizer  # noqa: E402

__all__ += ["LossScaleOptimizer"]
