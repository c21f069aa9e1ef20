"""One logger and one logging format for the project, and a progress reporter (done/total, rate, ETA)."""
import logging
import sys
import time

from src.runtime import env

# Every module, entry script and tool logs under this one name (`logging.getLogger("metric_learn")` to
# configure or filter it), whichever way it was started (a module run with `python -m` is `__main__`).
LOGGER_NAME = "metric_learn"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_configured = False


def setup_logging(level=logging.INFO):
    """Configure the root logger once: one format, to stderr."""
    global _configured
    if not _configured:
        logging.basicConfig(level=level, format=LOG_FORMAT, datefmt="%H:%M:%S", stream=sys.stderr)
        _configured = True
    env.log_choices(get_logger())


def get_logger():
    """The project's logger."""
    return logging.getLogger(LOGGER_NAME)


def format_seconds(seconds):
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


class Progress:
    """Logs `what: done/total (pct) rate unit/s ETA h:mm:ss` at most every `interval` seconds."""

    def __init__(self, total, what, logger, unit="images", interval=10.0, clock=time.monotonic):
        self.total = int(total)
        self.what = what
        self.logger = logger
        self.unit = unit
        self.interval = interval
        self.clock = clock
        self.start = clock()
        self.last_report = None
        self.done = 0

    def line(self):
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = self.done / elapsed
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta_text = format_seconds(eta) if eta != float("inf") else "?"
        return (f"{self.what}: {self.done}/{self.total} ({pct:.1f}%) "
                f"{rate:.1f} {self.unit}/s ETA {eta_text}")

    def update(self, n=1):
        self.done += n
        now = self.clock()
        finished = self.done >= self.total
        if finished or self.last_report is None or now - self.last_report >= self.interval:
            self.last_report = now
            self.logger.info(self.line())
