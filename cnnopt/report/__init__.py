"""`cnnopt report`: one self-contained HTML file of plotly figures about a study.

It opens with a summary (best trial, trials by state, epochs trained and saved, wall time, the
dashboard command), then the figures, then a table of every trial.

Optuna's own plotly figures (optimization history, importances, parallel coordinates, slices,
intermediate values) are used, with corrections so that they read at a glance:
- categories that are numbers are ordered as numbers (batch 32, 64, 128, never order of appearance);
- an axis of a bounded metric (accuracy, F1) spans the data with a small margin inside [0, 1]
  (plotly's autorange of a few points spans 0 to 1.8);
- with few complete trials, slices and parallel coordinates also show pruned trials at their last
  reported value, marked, and their caption says so;
- slices and parallel coordinates wrap into rows, so that the page of a 16-parameter study fits a
  1,280 px window (Optuna draws them as one row: 4,800 px of slices);
- each learning curve is named after its trial, on hover and in the legend (a click hides it).
What Optuna lacks is written here:
- a learning rate x batch size heat map (report R4's table); a continuous parameter is binned
  (decades of a log-uniform one, else quartiles), a discrete one keeps a column per value,
- a BatchNorm placement x activation heat map (report R3's figure 7); a heat map's colours compare
  like with like: final values of complete trials, or every trial's value at the last epoch all of
  them reached, never epoch-1 values of pruned trials beside epoch-10 values of complete ones;
- the value against FLOPs and against parameter count, with the Pareto front marked.

A trial that reused an earlier identical configuration's result (user attribute ``duplicate_of``,
the original's number) trained nothing: it is counted in the summary, marked in the trials table,
and left out of the figures that would show its original's point twice.

plotly.js is embedded once, inline, so the file works offline. A figure whose parameters a study
does not have is replaced by a one-line note, never an error.

Where to look:
- data.py: what is read from the study (a trial's values, which trials a figure draws, values
  that compare like with like, the summary's counts);
- layout.py: axes (numeric category order, a bounded metric's range), the grids that wrap wide
  figures, the heat maps' bins;
- figures.py: one builder per figure and FIGURES, the list of them in page order (a new figure
  is a builder plus one line there);
- page.py: the HTML page (summary table, sections, trials table) and write_report.
"""

from cnnopt.report.data import Summary, comparable_values, summarize
from cnnopt.report.figures import (
    FIGURE_KEYS,
    FIGURES,
    Figure,
    Section,
    build_sections,
    pareto_front,
)
from cnnopt.report.page import dashboard_command, render, write_report

__all__ = [
    "FIGURES",
    "FIGURE_KEYS",
    "Figure",
    "Section",
    "Summary",
    "build_sections",
    "comparable_values",
    "dashboard_command",
    "pareto_front",
    "render",
    "summarize",
    "write_report",
]
