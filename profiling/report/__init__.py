"""The report side of profiling: it reads a run folder through profiling/records.py alone (no torch, nothing
of training) and says where the time goes. analysis.py turns the records into plain data, roofline.py
sets a step against a GPU's limits, render.py draws the terminal report, plots.py the PNG figures;
`python -m profiling.report RUN` (__main__.py) is the command."""
