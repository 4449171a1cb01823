"""Progress for long work: a bar on a terminal, a few plain lines in logs."""

import logging
import re
import sys
import time

log = logging.getLogger("cluster.progress")


class Progress:
    def __init__(self, total: int, label: str, stream=None, width: int = 30):
        self.total, self.label, self.width = max(total, 1), label, width
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done = 0
        self.started = time.monotonic()
        self._logged = -1
        self._draw()

    def advance(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        self._draw()

    def _draw(self) -> None:
        elapsed = time.monotonic() - self.started
        if self.tty:
            filled = self.width * self.done // self.total
            bar = "#" * filled + "-" * (self.width - filled)
            end = "\n" if self.done == self.total else ""
            self.stream.write(
                f"\r{self.label} [{bar}] {self.done}/{self.total} {elapsed:.1f}s{end}"
            )
            self.stream.flush()
            return
        quarter = 4 * self.done // self.total  # plain lines at 0, 25, 50, 75 and 100 percent
        if quarter != self._logged:
            self._logged = quarter
            log.info("%s: %d/%d (%.1fs)", self.label, self.done, self.total, elapsed)


LOADED = "weights: loaded {done} of {total} bytes ({share:.0%})"
_LOADED = re.compile(r"weights: loaded (\d+) of (\d+) bytes")


def last_loaded(text: str) -> tuple[int, int] | None:
    """(bytes loaded, bytes in all) from the last LOADED line of a rank's log, if any."""
    found = _LOADED.findall(text)
    return (int(found[-1][0]), int(found[-1][1])) if found else None


JOINING = "joining its group"
JOINED = "joined its group"
"""What a rank of a TP replica logs before and after MLX forms its group (a link down between
the nodes leaves it between the two, silent, until the load timeout)."""


def joining(text: str) -> bool:
    """Whether a rank's log (this run's) says it waits to join its group."""
    return JOINING in text and JOINED not in text


START = "=== rank started"
"""The line a launcher writes into a rank's log at each start: a restart appends to the log
(the last run's traceback stays), and what is read about this run is what follows it."""


def start_line() -> str:
    return f"{START} {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n"


def this_run(text: str) -> str:
    """A rank log's text from its latest start on."""
    at = text.rfind(START)
    return text if at < 0 else text[at:]
