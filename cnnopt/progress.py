"""Live progress of `cnnopt run`: one line per worker and a study line, drawn with rich.

On a terminal it is a live table; elsewhere (CI, a log file) it prints one line per epoch and one
per finished trial instead, so a log shows a long study moving and stays readable.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from cnnopt.storage import describe


class RunDisplay:
    def __init__(
        self,
        study,
        url: str,
        n_workers: int,
        n_trials: int | None,
        enabled: bool = True,
        epoch_budget: int | None = None,
    ):
        self.study = study
        self.url = url
        self.n_trials = n_trials  # None: the epoch budget bounds the run
        self.epoch_budget = epoch_budget
        self.epochs = 0  # trained by this run
        self.console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
        self.live_mode = enabled and sys.stderr.isatty()
        self.log_lines = enabled and not self.live_mode  # a line per event instead of a table
        self.workers: dict[int, dict[str, Any]] = {
            i: {"state": "starting"} for i in range(n_workers)
        }
        self.counts = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0}
        self.best: float | None = None
        self.maximize = study.settings.direction == "maximize"
        self.t0 = time.time()
        self.live: Live | None = None

    def __enter__(self) -> RunDisplay:
        if self.live_mode:
            self.live = Live(
                self._render(), console=self.console, refresh_per_second=4, transient=False
            )
            self.live.__enter__()
        elif self.log_lines:
            bounds = [f"{self.n_trials} trial(s) to add"] if self.n_trials is not None else []
            if self.epoch_budget:
                bounds.append(f"{self.epoch_budget} epochs to train")
            self.console.print(
                f"cnnopt: study [bold]{self.study.name}[/] on {describe(self.url)}, "
                f"{len(self.workers)} worker(s), {' or '.join(bounds)}"
            )
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.update(self._render())
            self.live.__exit__(*exc)

    def update(self, ev: dict[str, Any]) -> None:
        w = self.workers.setdefault(ev.get("worker", -1), {})
        kind = ev["event"]
        if kind == "ready":
            w.update(state="idle")
        elif kind == "start":
            w.update(state="training", trial=ev["trial"], epoch=0, value=None)
            if ev.get("waiting_for") is not None:  # the same configuration runs in another worker
                w.update(state=f"waiting for #{ev['waiting_for']}")
            elif ev.get("duplicate_of") is not None:
                w.update(state=f"copying #{ev['duplicate_of']}")
        elif kind == "epoch":
            self.epochs += 1
            w.update(epoch=ev["epoch"], value=ev["value"])
            if self.log_lines:
                of = f"/{ev['epochs']}" if ev.get("epochs") else ""
                self.console.print(
                    f"trial {ev['trial']:>4} epoch {ev['epoch']}{of} "
                    f"{self.study.settings.metric} {ev['value']:.4f}  (worker {ev.get('worker', '-')})"
                )
        elif kind == "end":
            state = ev["state"]
            if state in self.counts:
                self.counts[state] += 1
            if state == "COMPLETE" and ev["value"] is not None:
                v = ev["value"]
                if self.best is None or (v > self.best if self.maximize else v < self.best):
                    self.best = v
            w.update(state="idle", last=f"#{ev['trial']} {state.lower()}")
            if self.log_lines:
                value = f" {ev['value']:.4f}" if ev.get("value") is not None else ""
                reason = f" ({ev['reason']})" if ev.get("reason") and state != "COMPLETE" else ""
                if ev.get("duplicate_of") is not None:  # copied, not trained
                    reason = f" (duplicate of #{ev['duplicate_of']})"
                if ev.get("over_budget"):  # recorded, never trained
                    reason = f" (over budget, not trained: {'; '.join(ev['over_budget'])})"
                self.console.print(
                    f"trial {ev['trial']:>4} {state.lower():<9}{value}{reason}  [{self._totals()}]"
                )
        elif kind == "death":
            w.update(state="died", last=ev["reason"])
            if self.log_lines:
                self.console.print(
                    f"[red]{ev['reason']}[/]; trials {ev['trials']} failed and re-queued"
                )
        elif kind == "exit":
            w.update(state="done")
        if self.live is not None:
            self.live.update(self._render())

    def _totals(self) -> str:
        c = self.counts
        best = f"{self.best:.4f}" if self.best is not None else "-"
        done = sum(c.values())
        of = f"/{self.n_trials}" if self.n_trials is not None else ""
        epochs = f"; {self.epochs}/{self.epoch_budget} epochs" if self.epoch_budget else ""
        return (
            f"{done}{of} done: {c['COMPLETE']} complete, {c['PRUNED']} pruned, "
            f"{c['FAIL']} failed; best {best}{epochs}; {time.time() - self.t0:.0f}s"
        )

    def _render(self) -> Table:
        table = Table(title=f"{self.study.name} - {self._totals()}", title_justify="left")
        for col in ("worker", "state", "trial", "epoch", self.study.settings.metric, "last"):
            table.add_column(col)
        for i, w in sorted(self.workers.items()):
            value = w.get("value")
            table.add_row(
                str(i),
                w.get("state", ""),
                str(w.get("trial", "")),
                str(w.get("epoch", "")),
                f"{value:.4f}" if value is not None else "",
                w.get("last", ""),
            )
        return table
