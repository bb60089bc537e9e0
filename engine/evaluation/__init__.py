"""The evaluation layer, with the paper's conventions: metrics (metrics.py), the scoring pass (scoring.py) and
the pass under a codec (compression.py), benchmark sets found in folders (benchmark_sets.py), the published
tables (paper.py; jpeg_paper.py, under JPEG), every set's results (results.py) and their table
(results_table.py) and captioned image grids (grids.py). It uses the model and the data, and knows nothing of
training."""
