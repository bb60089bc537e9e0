"""When a training loop must stop early: a signal from the user or the cluster, or the job's time limit.

Both are polled once per step, so the loop always stops between steps, writes a checkpoint and prints
the command that resumes.
"""

import os
import signal
import time
from pathlib import Path

STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")  # what a cluster or a user sends to stop a job
DEFAULT_CHECKPOINT_S = 10.0  # the margin for writing a checkpoint before one has been timed


class StopRequest:
    """SIGTERM, SIGUSR1 and Ctrl-C (to this process or its whole group) ask the loop to checkpoint and
    leave after the current step; a second Ctrl-C leaves at once."""

    def __init__(self):
        self.reason = None
        self.previous = {}

    def __enter__(self):
        for name in STOP_SIGNALS:
            sig = getattr(signal, name)
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.reason and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def ignore_stop_signals(worker_id):
    """In a loader worker: SLURM and Ctrl-C signal the whole process group, workers included. The
    training process handles the signal (a checkpoint, then a clean exit that shuts the workers down);
    a worker that died of it would take the training process down with it first."""
    for name in STOP_SIGNALS:
        signal.signal(getattr(signal, name), signal.SIG_IGN)


def process_age_s():
    """Seconds since this process started (as the cluster counts a job's time: imports, data decoding and
    compilation included), from /proc; where there is none, since this module was imported."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return time.monotonic() - _IMPORTED


class TimeLimit:
    """A job's time limit, counted from the process start, with a margin measured as the run goes: the
    slowest recent step three times over, plus twice the longest checkpoint write, plus the last
    validation when one is due next."""

    def __init__(self, seconds, clock=process_age_s):
        self.seconds, self.clock = seconds, clock
        self.steps, self.checkpoints, self.validation_s = [], [], 0.0

    def timed(self, step_s=None, checkpoint_s=None, validation_s=None):
        """Record how long a step, a checkpoint write or a validation took."""
        if step_s is not None:
            self.steps = [*self.steps[-19:], step_s]
        if checkpoint_s is not None:
            self.checkpoints.append(checkpoint_s)
        if validation_s is not None:
            self.validation_s = validation_s

    def margin_s(self, validation_next=False):
        checkpoint_s = max(self.checkpoints, default=DEFAULT_CHECKPOINT_S)
        return 3 * max(self.steps, default=0.0) + 2 * checkpoint_s + (self.validation_s if validation_next else 0)

    def reached(self, validation_next=False):
        return self.seconds is not None and self.clock() + self.margin_s(validation_next) > self.seconds


_IMPORTED = time.monotonic()
