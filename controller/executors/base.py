"""The executor interface: observe stages, apply reconcile's actions. All I/O lives behind it."""

from __future__ import annotations

from typing import Protocol, Sequence

from controller.plan import Plan
from controller.reconcile import Action, Observed


class Executor(Protocol):
    def observe(self, plan: Plan) -> dict[str, Observed]:
        """The state of every stage of the plan (one listing per cycle, not one call per stage)."""
        ...

    def apply(self, plan: Plan, actions: Sequence[Action]) -> None:
        """Carry out Launch / Delete actions. Applying an action twice must change nothing."""
        ...
