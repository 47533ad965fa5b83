"""The units in systemd/: systemd-analyze accepts them, their ExecStart lines parse with the real
click CLI, and the sandbox leaves writable exactly what the sync job writes (the tree, the TUF
state and cache dirs) and nothing at all for the server."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path, PurePosixPath

import click
import pytest

from mirror.cli import main

UNIT_DIR = Path(__file__).resolve().parent.parent / "systemd"
SYNC = "k8s-mirror.service"
TIMER = "k8s-mirror.timer"
SERVE = "k8s-mirror-serve.service"
UNITS = (SYNC, TIMER, SERVE)
SERVICES = (SYNC, SERVE)
TREE_ROOT = PurePosixPath("/srv/k8s-mirror")
# Prefixes systemd allows in front of an Exec*= binary (systemd.service(5), "Command lines").
EXEC_PREFIXES = "-@:+!|"

Unit = dict[str, dict[str, list[str]]]


def parse_unit(path: Path) -> Unit:
    """Sections -> key -> assignments in order, with systemd's rule that an empty assignment
    resets the list. Comments and backslash continuations are handled; nothing more is needed
    for these files."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    logical: list[str] = []
    for raw in path.read_text().splitlines():
        if not logical and raw.lstrip().startswith(("#", ";")):
            continue
        if raw.endswith("\\"):
            logical.append(raw[:-1])
            continue
        line = ("".join(logical) + raw).strip()
        logical = []
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"{path.name}: assignment before any section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not an assignment: {line}"
        values = section.setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
    return unit


def one(unit: Unit, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key, [])
    assert len(values) == 1, f"[{section}] {key}= should be set once, found {values}"
    return values[0]


def words(unit: Unit, section: str, key: str) -> list[str]:
    """A space-separated list setting (ReadWritePaths=, StateDirectory=, ...), all assignments."""
    return [w for v in unit.get(section, {}).get(key, []) for w in shlex.split(v)]


def exec_argv(unit: Unit) -> list[str]:
    """ExecStart= as the argv systemd would run: prefixes stripped, then split. The test refuses
    specifiers (%) and $VARIABLE expansion, so shlex splits exactly as systemd does."""
    line = one(unit, "Service", "ExecStart")
    command = line.lstrip(EXEC_PREFIXES)
    assert "%" not in command and "$" not in command, f"expansion in ExecStart: {line}"
    return shlex.split(command)


def parse_with_cli(argv: list[str]) -> click.Context:
    """Parse argv[1:] with the real click CLI without running anything: the group, then the
    subcommand (type conversion and validation included). Raises click.UsageError if invalid."""
    args = argv[1:]
    with main.make_context("k8s-mirror", list(args)) as group_ctx:
        name, command, rest = main.resolve_command(group_ctx, list(args))
        assert name is not None and command is not None
        return command.make_context(name, rest, parent=group_ctx)


@pytest.fixture(scope="module")
def units() -> dict[str, Unit]:
    return {name: parse_unit(UNIT_DIR / name) for name in UNITS}


# --- systemd-analyze verify --------------------------------------------------------------------


@cache
def analyze_binary() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze not installed (Debian/Ubuntu: apt-get install systemd)")
    return path


@cache
def supports_recursive_errors() -> bool:
    """systemd >= 250: with --recursive-errors=no the exit status covers only the unit named,
    not the host units it pulls in (sysinit.target, network-online.target, ...)."""
    out = subprocess.run(
        [analyze_binary(), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    return "--recursive-errors" in out.stdout


def stage_units(dest: Path, names: tuple[str, ...] = UNITS) -> dict[str, Path]:
    """Copy units into dest with every ExecStart binary swapped for an executable stub there
    (verify insists the binary exists); everything else, User= included, stays as written."""
    stub = dest / "k8s-mirror"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    staged = {}
    for name in names:
        lines = []
        for line in (UNIT_DIR / name).read_text().splitlines():
            if line.startswith("ExecStart="):
                value = line.removeprefix("ExecStart=")
                command = value.lstrip(EXEC_PREFIXES)
                prefix = value[: len(value) - len(command)]
                binary, _, rest = command.partition(" ")
                assert binary.startswith("/"), f"{name}: ExecStart binary not absolute: {binary}"
                line = f"ExecStart={prefix}{stub} {rest}"
            lines.append(line)
        path = dest / name
        path.write_text("\n".join(lines) + "\n")
        staged[name] = path
    return staged


def verify_problems(unit_path: Path) -> tuple[int, list[str], list[str]]:
    """Run systemd-analyze verify on one staged unit (its directory joins the unit search path,
    so the timer finds its service beside it). Returns the exit status, the output lines about
    our units and the other lines.

    A line is ours if it names one of our units or the staging directory: systemd prefixes every
    message about a unit with its file path (parse warnings: "<path>:<line>: Unknown key ...") or
    its name ("k8s-mirror.service: Command ... is not executable"). Every other line concerns a
    host unit pulled in as a dependency or the analyzer's own environment probing (no systemd as
    PID 1 in a container); those are not problems of these files and are only reported."""
    env = dict(os.environ)
    # Pin the level: info keeps notices such as "... is obsolete, automatically updating" (a
    # problem of our file) but not debug chatter that names our units on every line.
    env.update(SYSTEMD_LOG_LEVEL="info", SYSTEMD_LOG_COLOR="0", SYSTEMD_LOG_LOCATION="0")
    cmd = [analyze_binary(), "verify", "--man=no"]
    if supports_recursive_errors():
        cmd.append("--recursive-errors=no")
    proc = subprocess.run(
        [*cmd, str(unit_path)], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    ours, other = [], []
    for line in (proc.stdout + proc.stderr).splitlines():
        if not line.strip():
            continue
        mine = str(unit_path.parent) in line or any(name in line for name in UNITS)
        (ours if mine else other).append(line)
    return proc.returncode, ours, other


@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify_accepts_unit(name: str, tmp_path: Path) -> None:
    staged = stage_units(tmp_path)
    rc, ours, other = verify_problems(staged[name])
    for line in other:
        print(f"ignored (not about our units): {line}")
    assert not ours, "systemd-analyze verify:\n" + "\n".join(ours)
    if supports_recursive_errors():
        assert rc == 0, "systemd-analyze verify failed:\n" + "\n".join(other)


def test_verify_check_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above is not vacuous: a misspelt key and a missing binary are both reported."""
    staged = stage_units(tmp_path, (SYNC,))
    text = staged[SYNC].read_text().replace("Nice=10", "Nicee=10")
    staged[SYNC].write_text(text)
    (tmp_path / "k8s-mirror").unlink()
    rc, ours, _ = verify_problems(staged[SYNC])
    assert rc != 0
    assert any("Nicee" in line for line in ours), ours
    assert any("not executable" in line for line in ours), ours


# --- ExecStart lines against the real CLI --------------------------------------------------------


def test_sync_exec_start_parses(units: dict[str, Unit]) -> None:
    argv = exec_argv(units[SYNC])
    assert PurePosixPath(argv[0]).name == "k8s-mirror"
    ctx = parse_with_cli(argv)
    assert ctx.command.name == "sync"
    assert ctx.params["config_path"] == Path("/etc/k8s-mirror/mirror.toml")
    assert ctx.params["progress"] is False  # journal gets log lines, never bars
    assert ctx.params["dry_run"] is False


def test_serve_exec_start_parses(units: dict[str, Unit]) -> None:
    argv = exec_argv(units[SERVE])
    assert PurePosixPath(argv[0]).name == "k8s-mirror"
    ctx = parse_with_cli(argv)
    assert ctx.command.name == "serve"
    assert PurePosixPath(ctx.params["root"]) == TREE_ROOT
    assert (ctx.params["host"], ctx.params["port"]) == ("0.0.0.0", 8080)


def test_both_services_run_the_same_binary(units: dict[str, Unit]) -> None:
    assert exec_argv(units[SYNC])[0] == exec_argv(units[SERVE])[0]


def test_cli_parse_check_is_not_vacuous() -> None:
    with pytest.raises(click.UsageError):
        parse_with_cli(["k8s-mirror", "sync", "--no-such-flag"])
    with pytest.raises(click.UsageError):
        parse_with_cli(["k8s-mirror", "serve", "--port", "99999", "--root", "/srv"])


def test_timer_starts_the_sync_service(units: dict[str, Unit]) -> None:
    timer = units[TIMER]
    target = one(timer, "Timer", "Unit")
    assert target == SYNC and (UNIT_DIR / target).is_file()
    assert one(timer, "Timer", "OnCalendar") == "hourly"
    assert one(timer, "Timer", "Persistent") == "true"
    assert "timers.target" in words(timer, "Install", "WantedBy")
    # The timer is what gets enabled; the oneshot service is only ever started by it.
    assert "Install" not in units[SYNC]
    assert one(units[SYNC], "Service", "Type") == "oneshot"


# --- the sandbox -------------------------------------------------------------------------------

HARDENING = {
    "User": "k8s-mirror",
    "Group": "k8s-mirror",
    "UMask": "0022",
    "ProtectSystem": "strict",
    "PrivateTmp": "yes",
    "ProtectHome": "yes",
    "PrivateDevices": "yes",
    "NoNewPrivileges": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
}


@pytest.mark.parametrize("name", SERVICES)
def test_services_share_the_hardening(name: str, units: dict[str, Unit]) -> None:
    service = units[name]
    for key, expected in HARDENING.items():
        assert one(service, "Service", key) == expected, f"{name}: {key}="
    assert "DynamicUser" not in service["Service"]
    # An empty assignment is the last word: no capabilities at all.
    assert service["Service"].get("CapabilityBoundingSet") == []
    assert "@system-service" in words(service, "Service", "SystemCallFilter")


def rw_paths(unit: Unit) -> list[PurePosixPath]:
    # "-" (ignore if missing) and "+" (relative to RootDirectory=) prefixes do not change scope.
    return [PurePosixPath(p.lstrip("-+")) for p in words(unit, "Service", "ReadWritePaths")]


def test_sync_service_can_write_the_tree_and_its_state(units: dict[str, Unit]) -> None:
    service = units[SYNC]
    writable = rw_paths(service)
    assert any(TREE_ROOT.is_relative_to(p) for p in writable), writable
    # The same tree the server serves.
    serve_root = PurePosixPath(parse_with_cli(exec_argv(units[SERVE])).params["root"])
    assert serve_root == TREE_ROOT

    # sigstore's TUF client writes under XDG_DATA_HOME/XDG_CACHE_HOME; they must be the
    # directories systemd creates (owned by User=) and opens up under ProtectSystem=strict.
    env = dict(
        item.split("=", 1)
        for value in service["Service"].get("Environment", [])
        for item in shlex.split(value)
    )
    state_dirs = {
        PurePosixPath("/var/lib") / d for d in words(service, "Service", "StateDirectory")
    }
    cache_dirs = {
        PurePosixPath("/var/cache") / d for d in words(service, "Service", "CacheDirectory")
    }
    assert PurePosixPath(env["XDG_DATA_HOME"]) in state_dirs, (env, state_dirs)
    assert PurePosixPath(env["XDG_CACHE_HOME"]) in cache_dirs, (env, cache_dirs)


def test_server_writes_nothing(units: dict[str, Unit]) -> None:
    service = units[SERVE]["Service"]
    for key in ("ReadWritePaths", "StateDirectory", "CacheDirectory", "LogsDirectory"):
        assert key not in service, f"{SERVE} must stay read-only, found {key}="
    assert one(units[SERVE], "Service", "ProtectSystem") == "strict"
