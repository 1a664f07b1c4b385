"""How the suite's tests are shared out between pytest-xdist workers (see ``pytest_xdist_make_scheduler`` in
``tests/conftest.py``).

Most tests are light (the ASGI app in process) and are handed out one at a time. The end-to-end and browser
tests are heavy: they start ``prepaid serve`` processes (some with two uvicorn workers) and Chromium, and their
modules share module-scoped servers. Each of their modules goes whole to one worker (its servers start once),
and while light tests remain, only one worker at a time runs a heavy module: the others run light tests
alongside it instead of starting more servers on the same cores.

Work is tracked by the test's index in the collection, never by its id: schemathesis gives all of an API
document's generated tests one id on pytest 9, and xdist's scope schedulers, which key work by id, would run
only one of them. xdist's own ``--dist loadgroup`` would group by an ``xdist_group`` mark, but on pytest 9 it
silently ignores the marks (it renames test ids through ``item._nodeid``, which pytest 9 no longer reads).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from xdist.scheduler import LoadScopeScheduling
from xdist.workermanage import WorkerController

HEAVY_FOLDERS = ("tests/e2e/", "tests/browser/")


def is_heavy(scope: str) -> bool:
    """A heavy scope is a whole module (its path); a light one is one test (``#`` and its index)."""
    return not scope.startswith("#")


class HeavyModulesApart(LoadScopeScheduling):
    """LoadScopeScheduling's bookkeeping (scope -> {index: done}) with scopes of our own."""

    workqueue: Any
    assigned_work: Any

    def _scope(self, index: int) -> str:
        assert self.collection is not None
        path = self.collection[index].split("::", 1)[0]
        return path if path.startswith(HEAVY_FOLDERS) else f"#{index}"

    def schedule(self) -> None:
        assert self.collection_is_completed
        if self.collection is not None:  # a node came back: just hand out more work
            for node in self.nodes:
                self._reschedule(node)
            return
        if not self._check_nodes_have_same_collection():
            self.log("**Different tests collected, aborting run**")
            return
        self.collection = list(next(iter(self.registered_collections.values())))
        if not self.collection:
            return
        units: dict[str, dict[int, bool]] = {}
        for index in range(len(self.collection)):
            units.setdefault(self._scope(index), {})[index] = False
        # the biggest heavy modules first, then the light tests in collection order
        heavy = sorted((scope for scope in units if is_heavy(scope)), key=lambda scope: -len(units[scope]))
        light = [scope for scope in units if not is_heavy(scope)]
        self.workqueue = OrderedDict((scope, units[scope]) for scope in heavy + light)

        for _ in range(len(self.nodes) - len(self.workqueue)):  # more workers than work
            unused, _assigned = self.assigned_work.popitem()
            unused.shutdown()
        for node in self.nodes:
            self._assign_work_unit(node)
        for node in self.nodes:
            self._reschedule(node)
        if not self.workqueue:
            for node in self.nodes:
                node.shutdown()

    def _running_heavy(self, node: WorkerController) -> bool:
        return any(
            is_heavy(scope) and not all(unit.values()) for scope, unit in self.assigned_work[node].items()
        )

    def _assign_work_unit(self, node: WorkerController) -> None:
        """The next heavy module if no worker runs one, else the next light test; whatever is left at the end."""
        assert self.workqueue
        want_heavy = not any(self._running_heavy(worker) for worker in self.assigned_work)
        scope = next((s for s in self.workqueue if is_heavy(s) == want_heavy), next(iter(self.workqueue)))
        unit = self.workqueue.pop(scope)
        self.assigned_work.setdefault(node, {})[scope] = unit
        node.send_runtest_some([index for index, done in unit.items() if not done])

    def mark_test_complete(self, node: WorkerController, item_index: int, duration: float = 0) -> None:
        self.assigned_work[node][self._scope(item_index)][item_index] = True
        self._reschedule(node)

    def remove_node(self, node: WorkerController) -> str | None:
        """A node finished, or crashed: then the test it was running counts as done (xdist reports it as
        crashed) and the rest of its work goes back in the queue. Returns that test's id, or None."""
        workload = self.assigned_work.pop(node)
        if not self._pending_of(workload):
            return None
        assert self.collection is not None
        crashed = next(index for unit in workload.values() for index, done in unit.items() if not done)
        workload[self._scope(crashed)][crashed] = True
        for scope, unit in workload.items():
            if not all(unit.values()):
                self.workqueue[scope] = unit
        for other in self.assigned_work:
            self._reschedule(other)
        return self.collection[crashed]
