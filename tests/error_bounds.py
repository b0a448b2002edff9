"""The float64 reference, run with a bound on the error of the same formulas in a lower precision.

tests/reference.py is written on plain array expressions, so its functions run unchanged on
:class:`Bounded` values: each carries, beside its float64 value, a bound on how far the same
expression evaluated in a storage dtype (float32, say) could be from it - a first-order
running error analysis (Wilkinson; Higham, *Accuracy and Stability of Numerical Algorithms*,
ch. 3). Every operation adds its own rounding, ``u |r|`` plus half the smallest subnormal
(the absolute error of a subnormal result, so denormals and underflow are covered), and
carries its operands' bounds through (sums add them, products scale them, a quotient divides
them by the divisor's lower bound, a square root by the root). A result beyond the dtype's
largest finite value, a divisor that may be 0 or a root of a value that may be negative gets
an infinite bound: the element leaves the dtype's well-defined range, and only the NaN and
peer checks apply to it.

Scalars (Python floats) enter with their own rounding to the dtype (``u |c|``): the kernels
receive every scalar narrowed to it; and a quotient allows for the scalars its numerator was
multiplied by being applied after it instead (their product times half the smallest
subnormal: the quotient may be subnormal), as kernels that fold step sizes on the host do.
Inputs that already are in the dtype (params, grads) are exact.

The bound is for the reference's formulas; a kernel that orders the operations differently
(precomputed step sizes, ``m + (g - m)(1 - b1)`` for ``b1 m + (1 - b1) g``) makes errors of
the same order, which the factor in tests/tolerances.py allows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import reference


@dataclass(frozen=True)
class Precision:
    """Rounding of one floating-point type: unit roundoff, half the smallest subnormal, the
    smallest normal and the largest finite value."""

    u: float
    half_subnormal: float
    tiny: float
    max: float

    @classmethod
    def of(cls, dtype) -> "Precision":
        try:
            info = np.finfo(np.dtype(dtype))
        except TypeError:  # bfloat16 and the other ml_dtypes types
            import ml_dtypes
            info = ml_dtypes.finfo(dtype)
        # Half of float64's smallest subnormal is no float64 (it rounds to 0): use the whole.
        half = float(info.smallest_subnormal) / 2 or float(info.smallest_subnormal)
        return cls(float(info.eps) / 2, half, float(info.smallest_normal), float(info.max))


def _arrays(x, precision):
    """(value, bound, known >= 0, known <= 0, out_of_range) of an operand: a Bounded's own; a
    scalar's with its rounding (which keeps its sign)."""
    if isinstance(x, Bounded):
        return x.value, x.error, x.nonneg, x.nonpos, x.out_of_range
    value = np.asarray(x, dtype=np.float64)
    return value, precision.u * np.abs(value), value >= 0, value <= 0, False


class Bounded:
    """A float64 array, a bound on the error of computing it in ``precision``, and whether
    that computation's result is known to be >= 0 or <= 0 (rounding keeps the sign of an
    exact result, so a rounded ``(c g) g`` is >= 0 and its square root is defined however
    large the bound)."""

    __array_priority__ = 1000

    def __init__(self, value, error, precision: Precision, nonneg=None, nonpos=None,
                 out_of_range=False):
        self.value = np.asarray(value, dtype=np.float64)
        self.error = np.broadcast_to(np.asarray(error, dtype=np.float64), self.value.shape)
        self.precision = precision
        #: some value this one was computed from was outside the dtype's normal range: beyond
        #: its largest finite value, or a non-zero value below its smallest normal one
        self.out_of_range = np.broadcast_to(np.asarray(out_of_range, dtype=bool), self.value.shape)
        #: the product of the scalars this value was multiplied by since its last sum or
        #: quotient: a kernel may fold them into one step size applied later
        self.factor = 1.0
        exact = self.error == 0
        nonneg = (self.value >= 0) & exact if nonneg is None else nonneg
        nonpos = (self.value <= 0) & exact if nonpos is None else nonpos
        self.nonneg = np.broadcast_to(np.asarray(nonneg, dtype=bool), self.value.shape)
        self.nonpos = np.broadcast_to(np.asarray(nonpos, dtype=bool), self.value.shape)

    # --- the bookkeeping -------------------------------------------------------------------
    def _rounded(self, value, carried, nonneg, nonpos, out_of_range) -> "Bounded":
        """A result: its carried error, its own rounding; infinite beyond the dtype's range."""
        p = self.precision
        with np.errstate(invalid="ignore", over="ignore"):
            error = carried + p.u * np.abs(value) + p.half_subnormal
            beyond = np.abs(value) > p.max
            error = np.where(beyond, np.inf, error)
            below = (np.abs(value) < p.tiny) & (value != 0)
        return Bounded(value, np.where(np.isnan(error), np.inf, error), p, nonneg, nonpos,
                       out_of_range | beyond | below)

    def _binary(self, op, other, reflected=False) -> "Bounded":
        square = other is self
        a, ea, na, pa, oa = self.value, self.error, self.nonneg, self.nonpos, self.out_of_range
        b, eb, nb, pb, ob = _arrays(other, self.precision)
        if reflected:
            a, ea, na, pa, b, eb, nb, pb = b, eb, nb, pb, a, ea, na, pa
        out_of_range = oa | ob
        with np.errstate(all="ignore"):
            if op == "add":
                value, carried = a + b, ea + eb
                nonneg, nonpos = na & nb, pa & pb
            elif op == "subtract":
                value, carried = a - b, ea + eb
                nonneg, nonpos = na & pb, pa & nb
            elif op in ("multiply", "divide"):
                if op == "multiply":
                    value = a * b
                    carried = np.abs(a) * eb + np.abs(b) * ea + ea * eb
                else:
                    value = a / b
                    room = np.abs(b) - eb
                    carried = np.where(room > 0, (ea + np.abs(value) * eb) / room, np.inf)
                    # A kernel may apply the numerator's scalar factors after the quotient
                    # (step * (m / d) for (step * m) / d): that quotient may be subnormal, off
                    # by up to half the smallest subnormal, times those factors.
                    if not reflected and isinstance(other, Bounded):
                        carried = carried + self.factor * self.precision.half_subnormal
                nonneg, nonpos = (na & nb) | (pa & pb) | square, (na & pb) | (pa & nb)
            elif op == "maximum":
                return Bounded(np.maximum(a, b), np.maximum(ea, eb), self.precision, na | nb,
                               pa & pb, out_of_range)
            else:
                raise NotImplementedError(op)
        result = self._rounded(value, carried, nonneg, nonpos, out_of_range)
        if op in ("multiply", "divide") and not isinstance(other, Bounded):
            c = abs(float(np.max(np.abs(np.asarray(other, np.float64)))))
            if op == "multiply":
                result.factor = self.factor * c
            elif not reflected and c:
                result.factor = self.factor / c
        return result

    def __add__(self, o): return self._binary("add", o)
    def __radd__(self, o): return self._binary("add", o, reflected=True)
    def __sub__(self, o): return self._binary("subtract", o)
    def __rsub__(self, o): return self._binary("subtract", o, reflected=True)
    def __mul__(self, o): return self._binary("multiply", o)
    def __rmul__(self, o): return self._binary("multiply", o, reflected=True)
    def __truediv__(self, o): return self._binary("divide", o)
    def __rtruediv__(self, o): return self._binary("divide", o, reflected=True)

    def __neg__(self):
        return Bounded(-self.value, self.error, self.precision, self.nonpos, self.nonneg,
                       self.out_of_range)

    def __abs__(self):
        return Bounded(np.abs(self.value), self.error, self.precision,
                       np.ones_like(self.nonneg), np.zeros_like(self.nonpos), self.out_of_range)

    def __pow__(self, n):
        if n == 2:
            return self * self
        if isinstance(n, Bounded) or not np.isfinite(n):
            raise NotImplementedError(f"Bounded ** {n!r}")
        x, e, q = self.value, self.error, float(n)
        with np.errstate(all="ignore"):
            value = np.power(x, q)
            if q == 0:  # x**0 is 1, exactly, whatever x is (0 and NaN included)
                return Bounded(value, np.zeros_like(x), self.precision,
                               np.ones_like(self.nonneg), np.zeros_like(self.nonpos))
            # |x'^q - x^q| <= |q| max(lo^(q-1), hi^(q-1)) e over [lo, hi] = [x - e, x + e],
            # for x - e > 0; for 0 < q <= 1 also <= e^q (Hoelder), which holds down to 0.
            low, high = x - e, x + e
            slope = np.abs(q) * np.maximum(np.power(low, q - 1), np.power(high, q - 1))
            carried = np.where(low > 0, slope * e, np.inf)
            if 0 < q <= 1:
                carried = np.minimum(carried, np.where(self.nonneg | (low >= 0),
                                                       np.power(e, q), np.inf))
            carried = np.where((e == 0) & (x > 0), 0.0, carried)
            carried = np.where(x < 0, np.inf, carried)  # a negative base: NaN, unbounded
        return self._rounded(value, carried, np.ones_like(self.nonneg),
                             np.zeros_like(self.nonpos), self.out_of_range)

    def sqrt(self) -> "Bounded":
        x, e = self.value, self.error
        with np.errstate(all="ignore"):
            value = np.sqrt(x)
            # |sqrt(x') - sqrt(x)| <= min(|x' - x| / sqrt(x), sqrt(|x' - x|)) for x, x' >= 0
            carried = np.minimum(np.where(x > 0, e / value, np.inf), np.sqrt(e))
            maybe_negative = (x - e < 0) & ~self.nonneg    # then sqrt(x') may be NaN
            carried = np.where(maybe_negative | (x < 0), np.inf, carried)
            carried = np.where((x == 0) & (e == 0), 0.0, carried)
        return self._rounded(value, carried, np.ones_like(self.nonneg),
                             np.zeros_like(self.nonpos), self.out_of_range)

    def sign(self) -> "Bounded":
        uncertain = np.abs(self.value) <= self.error
        return Bounded(np.sign(self.value), np.where(uncertain, 2.0, 0.0), self.precision,
                       self.nonneg, self.nonpos, self.out_of_range)

    def copy(self) -> "Bounded":
        return Bounded(self.value.copy(), self.error.copy(), self.precision, self.nonneg.copy(),
                       self.nonpos.copy(), self.out_of_range.copy())

    @property
    def shape(self):
        return self.value.shape

    # --- NumPy's protocols: what tests/reference.py calls --------------------------------------
    _UFUNCS = {np.add: "add", np.subtract: "subtract", np.multiply: "multiply",
               np.true_divide: "divide", np.maximum: "maximum"}

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method != "__call__" or kwargs:
            return NotImplemented
        if ufunc in self._UFUNCS:
            a, b = inputs
            if isinstance(a, Bounded):
                return a._binary(self._UFUNCS[ufunc], b)
            return b._binary(self._UFUNCS[ufunc], a, reflected=True)
        (x,) = inputs
        if ufunc is np.sqrt:
            return x.sqrt()
        if ufunc is np.sign:
            return x.sign()
        if ufunc is np.absolute:
            return abs(x)
        if ufunc is np.negative:
            return -x
        if ufunc is np.square:
            return x * x
        return NotImplemented

    def __array_function__(self, func, types, args, kwargs):
        if func is np.full_like:
            like, fill = args[0], args[1] if len(args) > 1 else kwargs["fill_value"]
            value = np.full(like.shape, fill, dtype=np.float64)
            return Bounded(value, like.precision.u * abs(fill), like.precision, fill >= 0,
                           fill <= 0)
        return NotImplemented


@dataclass
class Result:
    """One tensor's reference result: the float64 ``value``, the ``bound`` on the error of
    the same formulas in the dtype, and where an intermediate left the dtype's normal range
    (``out_of_range``: beyond its largest finite value, or below its smallest normal one)."""

    value: np.ndarray
    bound: np.ndarray
    out_of_range: np.ndarray


def run(name: str, convention: str, hp: dict, params, grads_per_step, dtype,
        grad_scale=None) -> list[Result]:
    """The reference's steps on ``params`` (in the dtype) with ``grads_per_step``, one
    :class:`Result` per tensor. With ``grad_scale`` the grads are divided by it first, as
    the engine does (one multiplication by the dtype-rounded reciprocal)."""
    precision = Precision.of(dtype)
    step = getattr(reference, name)
    values = [Bounded(np.asarray(p, np.float64), 0.0, precision) for p in params]
    states = [{} for _ in params]
    for t, grads in enumerate(grads_per_step, start=1):
        for k, g in enumerate(grads):
            g64 = np.asarray(g, np.float64)
            if grad_scale is None:
                grad = Bounded(g64, 0.0, precision)
            else:
                with np.errstate(all="ignore"):
                    unscaled = g64 / grad_scale
                error = 2 * precision.u * np.abs(unscaled) + precision.half_subnormal
                grad = Bounded(unscaled, error, precision, unscaled >= 0, unscaled <= 0)
            values[k] = step(values[k], grad, states[k], t, hp, convention)
    return [Result(v.value, np.asarray(v.error), np.asarray(v.out_of_range)) for v in values]


def outside(actual, value, bound, factor: float, largest: float = np.inf) -> np.ndarray:
    """Indices (flat) of ``actual`` elements farther from ``value`` than ``factor`` times
    ``bound``, among those whose bound is finite and whose value is that far from overflowing
    the dtype (``largest``: its largest finite value); NaN counts as farther."""
    actual = np.asarray(actual, np.float64).ravel()
    value, bound = np.asarray(value).ravel(), np.asarray(bound).ravel()
    with np.errstate(invalid="ignore", over="ignore"):
        checked = np.isfinite(bound) & np.isfinite(value) & (np.abs(value) + factor * bound
                                                             <= largest)
    with np.errstate(invalid="ignore"):
        ok = np.abs(actual - value) <= factor * bound
    return np.flatnonzero(checked & ~ok)
