"""The training layer: the config (config.py), one job of a run (job.py), start-up (start.py), the loop
(loop.py), one timed step (step.py; restoration.py, training a CRM) and its census (step_census.py),
checkpoints (checkpoints.py), ranks (distributed.py), the explosion guard (explosion_guard.py), stopping
(stopping.py), the run folder (run_folder.py) and the console (progress.py). It drives the model, the data and
the evaluation, and writes the run folder through the profiling runtime."""
