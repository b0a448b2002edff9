"""``stochastic_rounding``, ``kahan_summation`` and ``seed`` of a fusedopt.keras optimizer:
how the stores of its bfloat16 variables round (fusedopt/memory/storage.py)."""

from __future__ import annotations

from ..engine.engine import check_seed
from ..memory import storage as _storage


class Rounding:
    """``stochastic_rounding`` / ``kahan_summation`` and ``seed``: how the bfloat16 variables'
    stores round (float32 variables round nothing, so they keep the plain mode)."""

    def __init__(self, stochastic_rounding, kahan_summation, seed):
        _storage.mode_of(False, stochastic_rounding, kahan_summation)  # raises for bad values
        self.stochastic_rounding = bool(stochastic_rounding)
        self.kahan_summation = bool(kahan_summation)
        self.seed = check_seed(seed)

    @property
    def active(self) -> bool:
        return self.stochastic_rounding or self.kahan_summation

    def options(self) -> dict:
        return {"stochastic_rounding": self.stochastic_rounding,
                "kahan_summation": self.kahan_summation}

    def config(self) -> dict:
        """fusedopt's keys of get_config(): only where set, so the defaults print as Keras'."""
        if not self.active:
            return {}
        config = {k: v for k, v in self.options().items() if v}
        if self.stochastic_rounding:
            config["seed"] = self.seed
        return config

    def check(self, class_name: str, variables: list) -> None:
        """Refuse a model with no bfloat16 variable, for which the option means nothing."""
        if self.active and not any(v.dtype == "bfloat16" for v in variables):
            flag = "stochastic_rounding" if self.stochastic_rounding else "kahan_summation"
            dtypes = sorted({str(v.dtype) for v in variables})
            raise ValueError(
                f"{class_name}: {flag}=True rounds the stores of bfloat16 variables, and this "
                f"model has none (its variables are {', '.join(dtypes)}; 'mixed_bfloat16' "
                "keeps float32 variables). Build the model under the 'bfloat16' dtype policy "
                f"for pure-bf16 training, or drop {flag}")
