"""The benchmarks: tools that drive the engine to measure it, printing figures (tests never assert times).
`python -m profiling.bench WHAT` (__main__.py); one module per bench, figures.py what they share."""
