"""The search benchmark: tabulated learning curves of R2's grid, replays of Optuna samplers x
pruners x deduplication against them, paired statistics, and real Ray Tune ASHA on the same table;
and a seeded random pool of a study's whole space, over which random search is replayed with each
pruner.

tabulate (train every grid configuration once per training seed, with cnnopt's own trainer) ->
table (committed JSON) -> replay (ask/tell studies that read curves instead of training) ->
stats (paired bootstrap intervals) -> section (rows, Markdown, anytime figure).
pool (train a random sample of a study's space, in sampling order) -> pool table -> pool_replay
(random search over the pool, paired per order seed) -> the section's pool part.
"""
