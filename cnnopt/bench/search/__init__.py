"""The search benchmark: tabulated learning curves of R2's grid, replays of Optuna samplers x
pruners x deduplication against them, paired statistics, and real Ray Tune ASHA on the same table.

tabulate (train every grid configuration once per training seed, with cnnopt's own trainer) ->
table (committed JSON) -> replay (ask/tell studies that read curves instead of training) ->
stats (paired bootstrap intervals) -> section (rows, Markdown, anytime figure).
"""
