"""The table printed at the end of `cnnopt run`: what happened, the best trial, what to do next."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from cnnopt.runner import RunSummary
from cnnopt.storage import describe, is_file_storage, mask_url


def print_run_summary(s: RunSummary, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"study {s.study_name}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("storage", describe(s.storage))
    table.add_row(
        "this run", f"{s.new_trials} new trial(s), {s.epochs} epochs trained in {s.seconds:.0f}s"
    )
    if s.epoch_budget and s.epochs >= s.epoch_budget:
        table.add_row(
            "epoch budget",
            f"{s.epoch_budget} spent: no trial started after it (the trials in progress finished)",
        )
    table.add_row(
        "all trials", ", ".join(f"{n} {k.lower()}" for k, n in sorted(s.states.items())) or "none"
    )
    if s.worker_deaths:
        table.add_row(
            "worker deaths", f"{s.worker_deaths} (their trials failed and were re-queued)"
        )
    if s.best_value is not None:
        source = f" ({s.best_source})" if s.best_source else ""
        table.add_row("best trial", f"#{s.best_number}: {s.best_value:.4f}{source}")
        for k, v in (s.best_params or {}).items():
            table.add_row(f"  {k}", f"{v:.4g}" if isinstance(v, float) else str(v))
    storage_arg = (
        ""
        if is_file_storage(s.storage) and s.storage.startswith("storage/")
        else f" --storage '{mask_url(s.storage)}'"
    )
    table.add_row("dashboard", f"cnnopt dashboard{storage_arg}")
    if s.pareto:  # a front, not one best trial
        table.add_row("Pareto front", f"cnnopt status {s.study_name}{storage_arg}")
        table.add_row("export the front", f"cnnopt export {s.study_name}{storage_arg} --pareto")
    else:
        table.add_row("export best", f"cnnopt export {s.study_name}{storage_arg} --out best.json")
    over = sum(1 for e in s.events if e["event"] == "end" and e.get("over_budget"))
    if over:
        table.add_row("over budget", f"{over} proposal(s), recorded and never trained")
    if s.interrupted:
        table.add_row("interrupted", "re-run the same command to resume")
    duplicates = sum(
        1 for e in s.events if e["event"] == "end" and e.get("duplicate_of") is not None
    )
    if duplicates:
        table.add_row("duplicates", f"{duplicates} (copied an earlier trial's result, no training)")
    console.print(table)
    if s.exhausted:
        console.print(f"cnnopt: {s.exhausted}", soft_wrap=True, markup=False)
    if s.best_value is not None:
        source = f", {s.best_source}" if s.best_source else ""
        console.print(f"best {s.best_value:.4f} (trial #{s.best_number}{source})")
