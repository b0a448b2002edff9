"""A Keras optimizer with several routes (fusedopt/keras/_routes.py): one engine per route.

``keras.optimizers.Muon`` gives its 2-D variables the Muon step and the others AdamW's, as
one step of ``apply``. Here each route is a fused engine of its own
(:class:`~fusedopt.keras._fused._Fused`: its registry entry, hyperparameters and state
variables) holding the variables its route takes, and :class:`Routed` stands where a
single engine stands: building hands every engine the whole list (each keeps its own), and
a step hands each engine its variables' grads. Every engine checks its part of a step
(hyperparameters, grads, what its passes need) before any engine steps (or its route does
anything to its variables: ``Route.before_step``), so a refused step changes nothing. Keras' ``iterations`` is read through one host copy, shared.
"""

from __future__ import annotations

from ._fused import _Fused


class Routed:
    """The engines of one Keras optimizer, one per route, in the order given."""

    def __init__(self, optimizer, backend: str, rounding, quantized, routes):
        self.lanes = tuple(_Fused(optimizer, backend, rounding, quantized, route)
                           for route in routes)
        first = self.lanes[0]
        for lane in self.lanes[1:]:
            lane.iterations = first.iterations  # one host copy of Keras' count
        self.backend, self.rounding, self.quantized = backend, rounding, quantized
        self.iterations = first.iterations
        self.applying = False  # inside apply(): the fused passes clip and decay

    @property
    def unheld(self) -> list[int]:
        """Keras' indices of the variables no engine steps (overwrite_with_gradient)."""
        return sorted(i for lane in self.lanes for i in lane.unheld)

    @property
    def moves_averages(self) -> bool:
        return all(lane.moves_averages for lane in self.lanes)

    def slot_variables(self, optimizer):
        return self.lanes[0].slot_variables(optimizer)

    def group_of(self, variable) -> int:
        return self.lanes[0].group_of(variable)

    def add(self, optimizer, variables: list, ema: bool = True, fresh: bool = False) -> None:
        for lane in self.lanes:
            lane.add(optimizer, variables, ema=ema, fresh=fresh)

    def step(self, optimizer, grads, variables, learning_rate=None) -> None:
        """One step: each engine gets the pairs of the variables it holds; all are
        checked before the first engine steps."""
        parts = []
        for lane in self.lanes:
            mine = [(g, v) for g, v in zip(grads, variables)
                    if optimizer._get_variable_index(v) in lane.position]
            if mine:
                held = [v for _, v in mine]
                arrays, positions = lane.prepare(optimizer, [g for g, _ in mine], held,
                                                 learning_rate)
                parts.append((lane, held, arrays, positions))
        for lane, _, arrays, positions in parts:
            lane.engine.check(arrays, positions)
        for lane, held, arrays, positions in parts:
            if learning_rate is None:  # apply(), not Keras' update_step on its own
                lane.route.before_step(optimizer, held)
            lane.engine.step(arrays, positions)
