"""How a run shows itself: tqdm bars on a terminal, parseable log lines everywhere else.

The engine reports through ``sync.Progress``; these are its two implementations. tqdm is
imported only here (and only when a terminal is attached).
"""

from __future__ import annotations

import json
import logging
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


class BarProgress:
    """tqdm bars for total bytes and files, on a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.stream = stream or sys.stderr
        self.files: Any = None
        self.per_file: dict[str, Any] = {}
        self.bytes: Any = tqdm(
            desc="bytes",
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=self.stream,
            position=1,
            leave=False,
        )

    def planned(self, files: int, total_bytes: int | None) -> None:
        self.files = self._tqdm(
            desc="files", total=files, unit="file", file=self.stream, position=0
        )

    def file_bytes(self, path: str) -> Callable[[int], None]:
        """Count into the total; a file that grows large gets a bar of its own."""
        received = 0

        def advance(n: int) -> None:
            nonlocal received
            received += n
            self.bytes.update(n)
            bar = self.per_file.get(path)
            if bar is None and received >= LARGE_FILE_BYTES:
                bar = self.per_file[path] = self._tqdm(
                    desc=path.rsplit("/", 1)[-1],
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    file=self.stream,
                    leave=False,
                    initial=received - n,
                )
            if bar is not None:
                bar.update(n)

        return advance

    def file_done(self, path: str, outcome: str, size_bytes: int) -> None:
        bar = self.per_file.pop(path, None)
        if bar is not None:
            bar.close()
        if self.files is not None:
            self.files.update(1)
            if outcome == "failed":
                self.files.write(f"failed: {path}", file=self.stream)

    def close(self) -> None:
        self.bytes.close()
        if self.files is not None:
            self.files.close()


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
