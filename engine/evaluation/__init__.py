"""The evaluation layer, with the paper's conventions: metrics (metrics.py), the scoring pass
(scoring.py), benchmark sets found in folders (benchmark_sets.py), the paper's table (paper.py), the
results table (results_table.py) and captioned image grids (grids.py). It uses the model and the data,
and knows nothing of training."""
