"""Run reports, status, metrics, the status command and the output a journal sees."""

from __future__ import annotations

import json
import re

from mirror.errors import PartialSyncError
from tests.conftest import Env

KUBECTL = "release/v1.34.2/bin/linux/amd64/kubectl"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) \S")


def reports(env: Env) -> list[dict]:
    return [
        json.loads(p.read_text()) for p in sorted((env.root / ".k8s-mirror/reports").glob("*.json"))
    ]


def metrics(env: Env) -> dict[str, float]:
    out = {}
    for line in (env.tmp / "metrics.prom").read_text().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def test_report_status_and_metrics_on_success_then_failure(env: Env) -> None:
    env.write_config(report={"metrics_file": str(env.tmp / "metrics.prom")})
    result = await env.cli("sync", "--config", str(env.config_path), "--no-progress")
    assert result.exit_code == 0, result.stderr
    (report,) = reports(env)
    assert report["outcome"] == "success" and report["exit_code"] == 0
    assert report["files_fetched"] == 4 and report["bytes_fetched"] > 0
    assert report["versions"]["v1.34.2"]["complete"] is True
    assert report["markers"] == {"stable": "v1.34.2"}
    status = json.loads((env.root / ".k8s-mirror/status.json").read_text())
    assert status["last_success"]["report"] == status["last_run"]["report"]
    m = metrics(env)
    assert m["k8s_mirror_last_run_exit_code"] == 0
    assert m['k8s_mirror_last_run_files{state="fetched"}'] == 4
    first_success = m["k8s_mirror_last_success_timestamp_seconds"]
    assert first_success > 0

    env.tree.add_release("v1.34.3", platforms=["linux/amd64"])
    env.tree.set_marker("stable", "v1.34.3")
    env.dl.faults.add("release/v1.34.3/bin/linux/amd64/kubectl", "404")
    result = await env.cli("sync", "--config", str(env.config_path), "--no-progress")
    assert result.exit_code == PartialSyncError.exit_code
    latest = reports(env)[-1]
    assert latest["outcome"] == "partial" and latest["exit_code"] == PartialSyncError.exit_code
    (failure,) = latest["failures"]
    assert failure["path"] == "release/v1.34.3/bin/linux/amd64/kubectl"
    assert failure["kind"] == "upstream" and "HTTP 404" in failure["reason"]
    status = json.loads((env.root / ".k8s-mirror/status.json").read_text())
    assert status["last_run"]["exit_code"] == PartialSyncError.exit_code
    assert status["last_success"]["exit_code"] == 0
    m = metrics(env)
    assert m["k8s_mirror_last_run_exit_code"] == PartialSyncError.exit_code
    assert m["k8s_mirror_last_run_failures"] == 1
    assert m["k8s_mirror_last_success_timestamp_seconds"] == first_success
    # written atomically: no temp files left anywhere
    leftovers = [p for p in env.tmp.rglob("*") if ".tmp-" in p.name]
    assert leftovers == []


async def test_status_command_human_and_json(env: Env) -> None:
    assert (await env.sync()).exit_code == 0
    human = await env.cli("status", "--root", str(env.root))
    assert human.exit_code == 0
    assert "release/v1.34.2: 30 files" in human.stdout
    assert "4 signature-verified" in human.stdout
    assert "marker stable -> v1.34.2" in human.stdout
    machine = await env.cli("status", "--root", str(env.root), "--json")
    data = json.loads(machine.stdout)
    assert data["releases"]["v1.34.2"]["signed"] == 4
    assert data["status"]["last_run"]["outcome"] == "success"


async def test_without_a_terminal_output_is_parseable_log_lines(env: Env) -> None:
    result = await env.cli("sync", "--config", str(env.config_path))
    assert result.exit_code == 0
    lines = result.stderr.splitlines()
    assert lines and all(LOG_LINE.match(line) for line in lines), lines
    assert "\r" not in result.stderr  # no progress bars
    assert sum("INFO fetched release/v1.34.2/bin/linux/amd64/" in ln for ln in lines) == 3
    assert result.stdout.startswith("success: fetched 4 files")


async def test_json_log_format(env: Env) -> None:
    result = await env.cli("sync", "--config", str(env.config_path), "--log-format", "json")
    assert result.exit_code == 0
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert {"ts", "level", "logger", "msg"} <= set(records[0])
    assert any(r["msg"].startswith("fetched ") for r in records)


async def test_quiet_prints_nothing_on_success(env: Env) -> None:
    result = await env.cli("sync", "--config", str(env.config_path), "--quiet")
    assert result.exit_code == 0
    assert result.stdout == "" and result.stderr == ""


async def test_progress_bars_when_asked(env: Env) -> None:
    result = await env.cli("sync", "--config", str(env.config_path), "--progress")
    assert result.exit_code == 0
    assert "files: 100%" in result.stderr


def test_large_files_get_a_bar_of_their_own() -> None:
    import io

    from mirror.progress import LARGE_FILE_BYTES, BarProgress

    out = io.StringIO()
    bars = BarProgress(stream=out)
    bars.planned(2, None)
    small = bars.file_bytes("release/v1/bin/linux/amd64/kubectl")
    big = bars.file_bytes("release/v1/kubernetes-server-linux-amd64.tar.gz")
    small(1000)
    for _ in range(3):
        big(LARGE_FILE_BYTES // 2)
    assert list(bars.per_file) == ["release/v1/kubernetes-server-linux-amd64.tar.gz"]
    bars.file_done("release/v1/kubernetes-server-linux-amd64.tar.gz", "fetched", 0)
    bars.file_done("release/v1/bin/linux/amd64/kubectl", "fetched", 1000)
    bars.close()
    assert bars.per_file == {}
    assert "kubernetes-server-linux-amd64.tar.gz" in out.getvalue()
    assert bars.bytes.n == 1000 + 3 * (LARGE_FILE_BYTES // 2)
