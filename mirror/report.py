"""What a run did, written where monitoring can read it.

Each run writes ``.k8s-mirror/reports/<start>.json`` (start/end, versions, files and bytes
fetched/reused/failed, every failure with its reason, exit code), rewrites
``.k8s-mirror/status.json`` (last run, last success), and can write a Prometheus
textfile-collector file. All three are written atomically, on success and on failure.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mirror.errors import LocalStoreError, MirrorError
from mirror.statefile import StateFormatError, read_json_file
from mirror.store import Store, write_atomic

log = logging.getLogger(__name__)
REPORT_FORMAT = 1
STATUS_MAX_BYTES = 64 << 10
_RUN_FIELDS: dict[str, type | tuple[type, ...]] = {
    "report": str,
    "started_at": str,
    "finished_at": str,
    "outcome": str,
    "exit_code": int,
}


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@dataclass
class Failure:
    """One thing a run could not do: the path it concerns, why, and the kind of error."""

    path: str
    kind: str
    """The error's ``kind``: ``integrity``, ``upstream``, ``local``, ``config`` or
    ``internal`` (an unexpected exception: a bug)."""
    reason: str
    release: str | None = None
    """The release the path belongs to, if any (its completeness depends on this)."""
    hint: str | None = None
    """What the user can do about it, when the error knows."""

    @classmethod
    def of(cls, exc: BaseException, path: str, release: str | None = None) -> Failure:
        if isinstance(exc, MirrorError):
            return cls(path, exc.kind, str(exc), release, exc.hint)
        return cls(path, "internal", f"unexpected {exc!r}", release)


@dataclass
class RunReport:
    command: str = "sync"
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    dry_run: bool = False
    outcome: str = "running"
    """``success``, ``partial`` (some files could not be fetched), ``integrity`` (some did not
    verify), ``failed`` or ``interrupted``."""
    exit_code: int | None = None
    error: str | None = None
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)
    markers: dict[str, str] = field(default_factory=dict)
    files_fetched: int = 0
    files_reused: int = 0
    files_present: int = 0
    files_failed: int = 0
    bytes_fetched: int = 0
    bytes_reused: int = 0
    retries: int = 0
    failures: list[Failure] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return (self.finished_at or time.time()) - self.started_at

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["format"] = REPORT_FORMAT
        data["started_at"] = _iso(self.started_at)
        data["finished_at"] = _iso(self.finished_at)
        data["duration_s"] = round(self.duration_s, 3)
        return data


def write_run_files(store: Store, report: RunReport, metrics_file: Path | None) -> Path:
    """Write the run report, update status.json and the metrics file; return the report path.

    Each of the three is attempted even when another fails (a full disk must not hide a
    failed run from a metrics file on another filesystem); the first failure is raised after.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(report.started_at))
    path = store.reports / f"{stamp}-{report.command}.json"
    data = report.to_json()
    errors: list[LocalStoreError] = []
    try:
        store.ensure_dir(store.reports)
        write_atomic(path, json.dumps(data, indent=1).encode(), tmp_dir=store.tmp)
    except LocalStoreError as exc:
        errors.append(exc)

    status = read_status(store)
    status["last_run"] = {
        "report": path.name,
        "started_at": data["started_at"],
        "finished_at": data["finished_at"],
        "outcome": report.outcome,
        "exit_code": report.exit_code,
    }
    if report.outcome == "success":
        status["last_success"] = status["last_run"]
        status["last_success_ts"] = report.finished_at
    status["format"] = REPORT_FORMAT
    try:
        _write_status(store, json.dumps(status, indent=1).encode())
    except LocalStoreError as exc:
        errors.append(exc)

    if metrics_file is not None:
        try:
            write_atomic(metrics_file, render_metrics(report, status).encode())
        except LocalStoreError as exc:
            errors.append(exc)
    if errors:
        for extra in errors[1:]:
            log.error("%s", extra)
        raise errors[0]
    return path


def _write_status(store: Store, data: bytes) -> None:
    """status.json by atomic rename; on a full disk, in place (a small file rewrites into
    the block it frees), because a stale "last run: success" is worse than a torn file."""
    target = store.state / "status.json"
    store.ensure_dir(store.state)
    try:
        write_atomic(target, data, tmp_dir=store.tmp)
        return
    except LocalStoreError as exc:
        if not isinstance(exc.__cause__, OSError) or exc.__cause__.errno != errno.ENOSPC:
            raise
        first = exc
    try:
        fd = os.open(target, os.O_RDWR | os.O_NOFOLLOW)
        with open(fd, "r+b") as handle:
            handle.truncate(0)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError:
        # No earlier status to overwrite, or not even its block is free: nothing to do.
        raise first from None


def read_status(store: Store) -> dict[str, Any]:
    """status.json, with every field it should have checked by type; what is missing, of the
    wrong type or unreadable is left out (the next run writes it anew)."""
    try:
        data = read_json_file(store.state / "status.json", max_bytes=STATUS_MAX_BYTES)
    except (FileNotFoundError, StateFormatError):
        return {}
    if not isinstance(data, dict):
        return {}
    status: dict[str, Any] = {}
    for key in ("last_run", "last_success"):
        run = data.get(key)
        if isinstance(run, dict) and all(
            run.get(name) is None
            or (isinstance(run.get(name), kind) and not isinstance(run.get(name), bool))
            for name, kind in _RUN_FIELDS.items()
        ):
            status[key] = {name: run.get(name) for name in _RUN_FIELDS}
    ts = data.get("last_success_ts")
    if isinstance(ts, int | float) and not isinstance(ts, bool) and ts >= 0:
        status["last_success_ts"] = float(ts)
    return status


def prune_reports(store: Store, keep: int) -> None:
    try:
        reports = sorted(store.reports.glob("*.json"))
        for old in reports[:-keep]:
            old.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("%s: cannot prune old reports: %s", store.reports, exc.strerror)


def render_metrics(report: RunReport, status: dict[str, Any]) -> str:
    """Prometheus text exposition format for node_exporter's textfile collector."""
    last_success = status.get("last_success_ts") or 0
    lines = [
        "# HELP k8s_mirror_last_success_timestamp_seconds End of the last fully successful run.",
        "# TYPE k8s_mirror_last_success_timestamp_seconds gauge",
        f"k8s_mirror_last_success_timestamp_seconds {float(last_success):.3f}",
        "# HELP k8s_mirror_last_run_timestamp_seconds End of the last run.",
        "# TYPE k8s_mirror_last_run_timestamp_seconds gauge",
        f"k8s_mirror_last_run_timestamp_seconds {float(report.finished_at or 0):.3f}",
        "# HELP k8s_mirror_last_run_exit_code Exit code of the last run.",
        "# TYPE k8s_mirror_last_run_exit_code gauge",
        f"k8s_mirror_last_run_exit_code {report.exit_code or 0}",
        "# HELP k8s_mirror_last_run_duration_seconds Duration of the last run.",
        "# TYPE k8s_mirror_last_run_duration_seconds gauge",
        f"k8s_mirror_last_run_duration_seconds {report.duration_s:.3f}",
        "# HELP k8s_mirror_last_run_bytes Bytes in the last run, by how they were obtained.",
        "# TYPE k8s_mirror_last_run_bytes gauge",
        f'k8s_mirror_last_run_bytes{{state="fetched"}} {report.bytes_fetched}',
        f'k8s_mirror_last_run_bytes{{state="reused"}} {report.bytes_reused}',
        "# HELP k8s_mirror_last_run_files Files in the last run, by state.",
        "# TYPE k8s_mirror_last_run_files gauge",
        f'k8s_mirror_last_run_files{{state="fetched"}} {report.files_fetched}',
        f'k8s_mirror_last_run_files{{state="reused"}} {report.files_reused}',
        f'k8s_mirror_last_run_files{{state="present"}} {report.files_present}',
        f'k8s_mirror_last_run_files{{state="failed"}} {report.files_failed}',
        "# HELP k8s_mirror_last_run_failures Files that failed in the last run.",
        "# TYPE k8s_mirror_last_run_failures gauge",
        f"k8s_mirror_last_run_failures {len(report.failures)}",
    ]
    return "\n".join(lines) + "\n"
