"""How a run shows itself: tqdm bars on a terminal, parseable log lines everywhere else.

The engine reports through ``pipeline.Progress``; these are its two implementations. tqdm is
imported only here (and only when a terminal is attached). While bars are up, log lines go
through ``tqdm.write`` so that they never split a bar. Also owns the process's standard
streams as a terminal program: library loggers kept quiet, and a stdout whose reader went away
(``k8s-mirror status | head -1``) does not fail a run that succeeded.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

log = logging.getLogger("mirror.progress")

THROUGHPUT_EVERY_S = 10.0
LARGE_FILE_BYTES = 64 << 20
"""Files that get a progress bar of their own once this much of them has arrived."""


class LogProgress:
    """No bars: one line per file and a periodic throughput line (systemd journal, pipes)."""

    def __init__(self, *, every_s: float = THROUGHPUT_EVERY_S) -> None:
        self.every_s = every_s
        self.files_total = 0
        self.files_done = 0
        self.bytes_done = 0
        self.started = time.monotonic()
        self.last_line = self.started

    def planned(self, files: int, total_bytes: int | None) -> None:
        self.files_total = files
        log.info("plan: %d selected files", files)

    def file_bytes(self, path: str) -> Callable[[int], None]:
        return self.advance_bytes

    def advance_bytes(self, n: int) -> None:
        self.bytes_done += n
        now = time.monotonic()
        if now - self.last_line >= self.every_s:
            self.last_line = now
            rate = self.bytes_done / max(now - self.started, 1e-6)
            log.info(
                "progress: files=%d/%d bytes=%d rate_mib_s=%.1f",
                self.files_done,
                self.files_total,
                self.bytes_done,
                rate / 2**20,
            )

    def file_done(self, path: str, outcome: str, size_bytes: int) -> None:
        self.files_done += 1
        if outcome == "present":
            log.debug("present %s", path)
        elif outcome == "failed":
            pass  # the failure itself is logged with its reason
        else:
            log.info("%s %s size=%d", outcome, path, size_bytes)

    def close(self) -> None:
        pass


class _TqdmLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record with ``tqdm.write``: above the bars, which are then redrawn."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


class _FileCounter:
    """The byte callback of one file. ``expect_bytes`` is called by the fetcher as each attempt
    starts, with what the response will carry (its Content-Length), so the bytes bar has a
    total although SUMS files carry no sizes."""

    def __init__(self, owner: BarProgress, path: str) -> None:
        self.owner = owner
        self.path = path
        self.received_bytes = 0
        self.expected_bytes = 0

    def expect_bytes(self, remaining_bytes: int) -> None:
        expected = self.received_bytes + remaining_bytes
        self.owner.grow_total(expected - self.expected_bytes)
        self.expected_bytes = expected

    def __call__(self, n: int) -> None:
        self.received_bytes += n
        self.owner.advance(self.path, n, self.received_bytes, self.expected_bytes)


class BarProgress:
    """tqdm bars for total bytes and files, on a terminal; log lines are written above them."""

    def __init__(self, stream: TextIO | None = None) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.stream = stream or sys.stderr
        self.files: Any = None
        self.per_file: dict[str, Any] = {}
        self.bytes: Any = tqdm(
            desc="bytes",
            total=0,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=self.stream,
            position=1,
            leave=False,
        )
        self._closed = False
        root = logging.getLogger()
        self._handlers = root.handlers[:]
        root.handlers[:] = [self._through_bars(h) for h in self._handlers]

    def _through_bars(self, handler: logging.Handler) -> logging.Handler:
        if not isinstance(handler, logging.StreamHandler) or handler.stream is not self.stream:
            return handler
        replacement = _TqdmLogHandler(self.stream)
        replacement.setFormatter(handler.formatter)
        replacement.setLevel(handler.level)
        return replacement

    def planned(self, files: int, total_bytes: int | None) -> None:
        self.files = self._tqdm(
            desc="files", total=files, unit="file", file=self.stream, position=0
        )
        if total_bytes:
            self.grow_total(total_bytes)

    def grow_total(self, delta_bytes: int) -> None:
        if delta_bytes:
            self.bytes.total += delta_bytes
            self.bytes.refresh()

    def file_bytes(self, path: str) -> Callable[[int], None]:
        """Count into the total; a file that grows large gets a bar of its own."""
        return _FileCounter(self, path)

    def advance(self, path: str, n: int, received_bytes: int, expected_bytes: int) -> None:
        self.bytes.update(n)
        bar = self.per_file.get(path)
        if bar is None and received_bytes >= LARGE_FILE_BYTES:
            bar = self.per_file[path] = self._tqdm(
                desc=path.rsplit("/", 1)[-1],
                total=expected_bytes or None,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=self.stream,
                leave=False,
                initial=received_bytes - n,
            )
        if bar is not None:
            bar.update(n)

    def file_done(self, path: str, outcome: str, size_bytes: int) -> None:
        bar = self.per_file.pop(path, None)
        if bar is not None:
            bar.close()
        if self.files is not None:
            self.files.update(1)
            if outcome == "failed":
                self.files.write(f"failed: {path}", file=self.stream)

    def close(self) -> None:
        """Take the bars down and give logging its plain handlers back (idempotent: called
        before an interruption message, and again on the way out)."""
        if self._closed:
            return
        self._closed = True
        for bar in self.per_file.values():
            bar.close()
        self.bytes.close()
        if self.files is not None:
            self.files.close()
        logging.getLogger().handlers[:] = self._handlers


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "ts": round(record.created, 3),
                "level": record.levelname.lower(),
                "logger": record.name,
                "msg": record.getMessage(),
            }
        )


def setup_logging(*, verbose: int, quiet: bool, fmt: str, stream: TextIO | None = None) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("mirror").setLevel(level)
    # urllib3 (under sigstore's TUF client) logs every retry of an offline trust-root refresh
    # as a warning; verify.py says it once, in our words. -vv shows them again.
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose > 1 else logging.ERROR)


QUIET_LIBRARIES = ("urllib3", "tuf", "securesystemslib")


class _PipeSafeRaw(io.RawIOBase):
    """A file descriptor whose writes never fail with EPIPE: once the reader has gone, output
    is dropped. What we print is a summary of work already done; losing its reader must not
    turn that work into a failure."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self.reader_gone = False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    def write(self, data: Any) -> int:
        size = len(memoryview(data).cast("B"))
        if not self.reader_gone:
            try:
                return os.write(self._fd, data)
            except BrokenPipeError:
                self.reader_gone = True
        return size


def pipe_safe_stdout() -> None:
    """Replace the process's real stdout with one that ignores a closed pipe (leaves a
    replaced stdout, e.g. a test runner's, alone)."""
    stdout = sys.__stdout__
    if stdout is None or sys.stdout is not stdout:
        return
    try:
        fd = stdout.fileno()
        stdout.flush()
    except (OSError, ValueError):
        return
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(_PipeSafeRaw(fd)),
        encoding=stdout.encoding,
        errors=stdout.errors,
        line_buffering=stdout.line_buffering,
    )
