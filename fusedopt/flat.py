"""A flat parameter arena: params, grads and optimizer state as views into a few buffers.

With every param of one dtype in one buffer, an optimizer step is one pass over that
buffer: one launch-table entry, one CUDA launch or Numba call per dtype, whatever the
number of params - and no per-param work on the host.

Weight decay exclusions (``Optimizer.exclude_from_weight_decay``) split the buffer into
runs of params that all decay or all do not; each run is one table entry and the two kinds
are two calls (the kernels take one weight decay per call). Excluded params are laid out
after the others when the arena is told which they are (``no_decay=``), so a step stays at
two entries per dtype; without that hint it is still right, with one entry per run.
"""

from __future__ import annotations

import re
import weakref
from typing import Any, Mapping

import numpy as np

from . import config


def _as_shape(shape) -> tuple:
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    try:
        dims = tuple(int(d) for d in shape)
    except TypeError:
        raise TypeError(f"a shape is an int or a tuple of ints, got {shape!r}") from None
    if any(d < 0 for d in dims):
        raise ValueError(f"a shape cannot have negative sizes, got {dims}")
    return dims


def _entry(spec, default_dtype) -> tuple[tuple, np.dtype]:
    """``shape`` or ``(shape, dtype)`` -> (shape, dtype). A pair whose second item is not
    an int is (shape, dtype); anything else is a shape."""
    if (isinstance(spec, (tuple, list)) and len(spec) == 2
            and not isinstance(spec[1], (int, np.integer))):
        return _as_shape(spec[0]), np.dtype(spec[1])
    return _as_shape(spec), np.dtype(default_dtype)


class FlatParams:
    """Params whose values, grads and optimizer state live in one buffer per dtype.

    Args:
        layout: a dict ``name -> shape`` or ``name -> (shape, dtype)``, or a list of shapes
            or ``(shape, dtype)`` pairs. ``params`` and ``grads`` follow its form.
        dtype: the dtype of entries that give none. float32.
        xp: the array module to allocate with, ``numpy`` or ``cupy``. numpy.
        no_decay: names (regular expressions, searched) or, for a list layout, indices of
            the params the optimizer will exclude from weight decay; they are placed after
            the others so the two kinds stay two contiguous runs. A layout hint only: what
            decays is decided by the optimizer's ``exclude_from_weight_decay``.

    Attributes:
        params, grads: views into the param and grad buffers, shaped as the layout says.
            The backward pass writes each grad into its view (``arena.grads[k][...] = dk``).
        buffers, grad_buffers: dtype name -> the flat buffer behind them.

    Example::

        >>> import numpy as np, fusedopt
        >>> arena = fusedopt.FlatParams({"w": (3, 4), "b": (4,)}, no_decay=["b"])
        >>> _ = arena.adopt({"w": np.ones((3, 4)), "b": np.zeros(4)})
        >>> opt = fusedopt.AdamW(learning_rate=0.1)
        >>> opt.exclude_from_weight_decay(var_names=["b"])
        >>> arena.grads["w"][...] = 1.0
        >>> opt.apply_gradients(arena)          # or arena.step(opt)
        1
    """

    def __init__(self, layout, dtype=np.float32, xp=np, no_decay=()):
        if isinstance(layout, Mapping):
            names = [str(k) for k in layout]
            entries = [_entry(v, dtype) for v in layout.values()]
        else:
            entries = [_entry(v, dtype) for v in layout]
            names = None
        self.names = names
        self.shapes = [shape for shape, _ in entries]
        self.dtypes = [d for _, d in entries]
        self._xp = xp
        hinted = self._hinted(no_decay)
        # Offsets: per dtype, params in layout order, hinted ones last.
        self.offsets: list[int] = [0] * len(entries)
        self.buffers: dict[str, Any] = {}
        self.grad_buffers: dict[str, Any] = {}
        self._order: dict[str, list[int]] = {}
        for d in dict.fromkeys(self.dtypes):
            members = [i for i, di in enumerate(self.dtypes) if di == d]
            order = [i for i in members if i not in hinted] + [i for i in members if i in hinted]
            align = max(1, config.FLAT_ALIGN_BYTES // d.itemsize)
            end = 0
            for i in order:
                self.offsets[i] = end
                size = int(np.prod(self.shapes[i], dtype=np.int64))
                end += -(-size // align) * align
            self.buffers[d.name] = _aligned_zeros(xp, end, d, align)
            self.grad_buffers[d.name] = _aligned_zeros(xp, end, d, align)
            self._order[d.name] = order
        params = [self._view(self.buffers, i) for i in range(len(entries))]
        grads = [self._view(self.grad_buffers, i) for i in range(len(entries))]
        self._param_list, self._grad_list = params, grads
        self.params = dict(zip(names, params)) if names is not None else params
        self.grads = dict(zip(names, grads)) if names is not None else grads
        self._pairs = weakref.WeakKeyDictionary()  # optimizer -> its (grad, param) segments

    @classmethod
    def from_arrays(cls, arrays, xp=None, no_decay=()) -> "FlatParams":
        """An arena shaped like ``arrays`` (a list or dict), holding copies of them."""
        items = arrays.values() if isinstance(arrays, Mapping) else arrays
        specs = [(tuple(a.shape), a.dtype) for a in items]
        layout = dict(zip(arrays, specs)) if isinstance(arrays, Mapping) else specs
        if xp is None:
            first = next(iter(items), None)
            xp = np if first is None or isinstance(first, np.ndarray) else _module_of(first)
        arena = cls(layout, xp=xp, no_decay=no_decay)
        arena.adopt(arrays)
        return arena

    def _hinted(self, no_decay) -> set:
        patterns = [n for n in no_decay if isinstance(n, str)]
        indices = {int(n) for n in no_decay if not isinstance(n, str)}
        if patterns and self.names is None:
            raise ValueError("no_decay names need a dict layout (names are its keys); with a "
                             "list layout give indices")
        hinted = {i for i in indices if 0 <= i < len(self.shapes)}
        if indices - hinted:
            raise ValueError(f"no_decay indices {sorted(indices - hinted)} are out of range "
                             f"for {len(self.shapes)} params")
        if patterns:
            pattern = re.compile("|".join(patterns))
            hinted |= {i for i, n in enumerate(self.names) if pattern.search(n)}
        return hinted

    def _view(self, buffers, i):
        size = int(np.prod(self.shapes[i], dtype=np.int64))
        d = self.dtypes[i].name
        return buffers[d][self.offsets[i]: self.offsets[i] + size].reshape(self.shapes[i])

    def __len__(self) -> int:
        return len(self.shapes)

    # --- filling ----------------------------------------------------------------------------
    def adopt(self, arrays):
        """Copy ``arrays`` (same form, shapes and order as the layout) into the arena and
        return :attr:`params`; from then on train the returned views, not ``arrays``."""
        if isinstance(arrays, Mapping):
            if self.names is None or list(map(str, arrays)) != self.names:
                raise ValueError(f"adopt() got keys {list(arrays)}, the arena holds "
                                 f"{self.names if self.names is not None else 'a list'}")
            arrays = list(arrays.values())
        arrays = list(arrays)
        if len(arrays) != len(self.shapes):
            raise ValueError(f"adopt() got {len(arrays)} arrays, the arena holds "
                             f"{len(self.shapes)}")
        for i, (view, a) in enumerate(zip(self._param_list, arrays)):
            if tuple(a.shape) != self.shapes[i]:
                raise ValueError(f"param {self._label(i)}: shape {tuple(a.shape)} differs from "
                                 f"the arena's {self.shapes[i]}")
        for view, a in zip(self._param_list, arrays):
            view[...] = self._xp.asarray(a, dtype=view.dtype)
        return self.params

    def zero_grad(self) -> None:
        """Set every grad to zero (one fill per buffer)."""
        for buffer in self.grad_buffers.values():
            buffer.fill(0)

    def _label(self, i: int) -> str:
        return repr(self.names[i]) if self.names is not None else str(i)

    # --- stepping ---------------------------------------------------------------------------
    def step(self, opt, grad_scale=None) -> int:
        """One step of ``opt`` over the whole arena; returns ``opt.iterations``.

        The first step builds ``opt`` for the arena's segments (its state is flat too, one
        array per segment and slot); ``opt`` then belongs to this arena. ``grad_scale``: as
        ``opt.apply_gradients``.
        """
        bound = self._pairs.get(opt)
        if bound is None:
            bound = self._pairs[opt] = self._bind(opt)
        return opt.apply_gradients(bound[0], grad_scale=grad_scale)

    def _segments(self, opt) -> list[tuple[str, int, int, bool]]:
        """(dtype, start, stop, decays): maximal runs of params in buffer order that all get
        weight decay or all do not."""
        decay = bool(opt.hyper.get("weight_decay"))
        segments = []
        for d, order in self._order.items():
            runs: list[list] = []
            for i in order:
                name = self.names[i] if self.names is not None else None
                decays = not decay or opt._uses_weight_decay(self._param_list[i], name)
                size = int(np.prod(self.shapes[i], dtype=np.int64))
                if runs and runs[-1][2] == decays:
                    runs[-1][1] = self.offsets[i] + size
                else:
                    runs.append([self.offsets[i], self.offsets[i] + size, decays])
            segments += [(d, start, stop, decays) for start, stop, decays in runs]
        return segments

    def _bind(self, opt) -> list:
        segments = self._segments(opt)
        params = [self.buffers[d][a:b] for d, a, b, _ in segments]
        grads = [self.grad_buffers[d][a:b] for d, a, b, _ in segments]
        if not opt._params:
            opt._build(params, [decays for *_, decays in segments])
        elif not self._owns(opt):
            raise ValueError(f"{opt.name} was built for other params; an optimizer steps "
                             "one arena (or one list of params): make a new one")
        return list(zip(grads, opt._engine.params)), segments

    def _owns(self, opt) -> bool:
        segments = self._segments(opt)
        if len(opt._engine.params) != len(segments):
            return False
        for p, (d, a, b, _) in zip(opt._engine.params, segments):
            base = self.buffers[d]
            if p.dtype != base.dtype or p.size != b - a or _address(p) != _address(base[a:b]):
                return False
        return True

    def state(self, opt) -> dict | list:
        """``opt``'s state per param (shaped views into its flat state), in the layout's
        form: ``{name: {slot: view}}`` or ``[{slot: view}, ...]``."""
        if opt not in self._pairs:
            raise ValueError(f"{opt.name} has not stepped this arena yet")
        if any(st.quantized for st in opt._engine.storages):
            raise ValueError(f"{opt.name} keeps {opt.state_dtype} state: its blocks run over "
                             "each run of same-dtype params of the arena as over one param, "
                             "so there are no views per param; read opt.state_dict()")
        segments = self._pairs[opt][1]
        views = []
        for i in range(len(self.shapes)):
            d, off = self.dtypes[i].name, self.offsets[i]
            size = int(np.prod(self.shapes[i], dtype=np.int64))
            k = next(k for k, (sd, a, b, _) in enumerate(segments)
                     if sd == d and a <= off and off + size <= b)
            a = segments[k][1]
            views.append({n: s[off - a: off - a + size].reshape(self.shapes[i])
                          for n, s in zip(opt._engine.slot_names(k), opt._engine.states[k])})
        return dict(zip(self.names, views)) if self.names is not None else views


def _address(array) -> int:
    if isinstance(array, np.ndarray):
        return array.__array_interface__["data"][0]
    return array.data.ptr


def _aligned_zeros(xp, n: int, dtype, align: int):
    """``n`` zeros whose first element sits on a ``FLAT_ALIGN_BYTES`` boundary."""
    raw = xp.zeros(n + align, dtype)
    skip = (-_address(raw) % config.FLAT_ALIGN_BYTES) // dtype.itemsize
    return raw[skip: skip + n]


def _module_of(array):
    import cupy
    return cupy
