"""What a person sees when something is wrong, through the installed ``k8s-mirror``: the
missing release, a bad flag, a path that is no tree, a closed stdout, and help for every
option."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import click

from mirror.cli import main
from tests.conftest import Env

PROGRAM = str(Path(sys.executable).parent / "k8s-mirror")


async def test_a_release_that_does_not_exist_has_its_own_exit_code(env: Env) -> None:
    result = await env.cli("sync", "--config", str(env.config_path), "--version", "v1.99.0")
    assert result.exit_code == 13, result.stderr
    assert f"k8s-mirror: error: release v1.99.0 not found upstream ({env.dl_url})" in (
        result.stderr
    )
    assert "k8s-mirror: hint: check the version" in result.stderr
    assert "HTTP 404" not in result.stderr
    # Together with a release that exists, the typo still stops the run before any download.
    both = await env.cli(
        "sync", "--config", str(env.config_path), "--version", "stable", "--version", "v1.99.0"
    )
    assert both.exit_code == 13
    gets = env.release_gets()
    assert "release/v1.99.0/SHA256SUMS" in gets
    assert [g for g in gets if "SUMS" not in g] == []  # no file of v1.34.2 was downloaded
    assert not (env.root / "release/v1.34.2").exists()
    dry = await env.cli("sync", "--config", str(env.config_path), "--dry-run", "--version=v1.99.0")
    assert dry.exit_code == 13


async def test_a_bad_flag_is_named_as_typed(env: Env) -> None:
    result = await env.cli(
        "sync", "--config", str(env.config_path), "--platform", "linux-amd64", "--concurrency", "0"
    )
    assert result.exit_code == 2
    line = result.stderr.strip().splitlines()[0]
    assert "--platform linux-amd64 (select.platforms[0]): 'linux-amd64' is not 'os/arch'" in line
    assert "--concurrency 0 (upstream.concurrency): must be between 1 and 256" in line
    assert str(env.config_path) not in line
    typo = await env.cli("sync", "--config", str(env.config_path), "--component", "kubctl")
    assert typo.exit_code == 2
    assert "--component (select.components): 'kubctl' matches no file" in typo.stderr
    assert str(env.config_path) not in typo.stderr
    fetch = await env.cli("fetch", "v1.2", "--output", str(env.tmp / "out"))
    assert fetch.exit_code == 2
    assert "VERSION v1.2 (select.versions[0]): 'v1.2' is neither a version" in fetch.stderr
    assert not (env.tmp / "out").exists()


async def test_verify_and_status_refuse_a_path_that_is_no_tree(env: Env) -> None:
    plain = env.tmp / "photos"
    plain.mkdir()
    (plain / "cat.jpg").write_bytes(b"meow")
    verify = await env.cli("verify", "--root", str(plain))
    assert verify.exit_code == 2
    assert verify.stderr.startswith(f"k8s-mirror: error: --root: {plain}: not a k8s-mirror tree")
    status = await env.cli("status", "--root", str(env.tmp / "nowhere"))
    assert status.exit_code == 2
    assert f"{env.tmp / 'nowhere'}: does not exist" in status.stderr
    assert "last success" not in status.stdout
    assert sorted(p.name for p in plain.iterdir()) == ["cat.jpg"]
    assert not (env.tmp / "nowhere").exists()


def run_with_closed_stdout(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """As ``k8s-mirror ... | head -0``: the reader is gone before anything is printed."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [PROGRAM, *args], cwd=cwd, stdout=write_end, stderr=subprocess.PIPE, text=True
        )
    finally:
        os.close(write_end)


async def test_a_closed_stdout_does_not_fail_a_successful_run(env: Env) -> None:
    def sync() -> subprocess.CompletedProcess[str]:
        return run_with_closed_stdout("sync", "--config", str(env.config_path), cwd=env.tmp)

    result = await asyncio.to_thread(sync)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
    assert (env.root / "release/v1.34.2/bin/linux/amd64/kubectl").is_file()
    status = await asyncio.to_thread(
        run_with_closed_stdout, "status", "--root", str(env.root), cwd=env.tmp
    )
    assert (status.returncode, status.stderr) == (0, "")


def test_every_option_has_help_and_import_help_matches_the_readme() -> None:
    missing = [
        f"{name} {param.opts[0]}"
        for name, command in main.commands.items()
        for param in command.params
        if isinstance(param, click.Option) and not param.hidden and not param.help
    ]
    assert missing == []
    text = subprocess.run(
        [PROGRAM, "import", "--help"], capture_output=True, text=True, check=True
    ).stdout
    flat = " ".join(text.split())
    assert "only if it is the Sigstore public-good root" in flat
