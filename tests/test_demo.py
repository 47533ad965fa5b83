"""``k8s-mirror demo`` through the installed entry point: a signed sync and a verify with no
network and no writable home, everything inside --dir, and the look-alikes kept up on request."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

PROGRAM = str(Path(sys.executable).parent / "k8s-mirror")


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROGRAM, *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=100,
    )


def test_demo_syncs_and_verifies_offline_inside_its_directory(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o500)  # not writable: the demo must not need it
    work = tmp_path / "work"
    work.mkdir()
    # A proxy that does not exist: any request that is not to the look-alikes would fail.
    env = {"HOME": str(home), "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": ""}
    result = run("demo", "--dir", "d", cwd=work, env=env)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "LOCAL DEMONSTRATION" in result.stdout
    assert "signatures checked" in result.stdout and ", 174 files, " in result.stdout
    demo = work / "d"
    assert sorted(p.name for p in work.iterdir()) == ["d"]
    assert list(home.iterdir()) == []
    kubectl = demo / "tree/release/v1.34.2/bin/linux/amd64/kubectl"
    assert kubectl.stat().st_size == 1 << 20
    assert (kubectl.parent / "kubectl.sigstore.json").is_file()
    assert (demo / "tree/release/stable.txt").read_text() == "v1.34.2"
    config = tomllib.loads((demo / "mirror.toml").read_text())
    assert config["upstream"]["url"].startswith("http://127.0.0.1:")
    assert config["verify"]["rekor_url"].startswith("http://127.0.0.1:")
    # The printed commands work as printed: verify needs no server.
    assert f"k8s-mirror verify --config {demo / 'mirror.toml'}" in result.stdout
    again = run("verify", "--config", str(demo / "mirror.toml"), cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    # A second demo in the same directory starts over and succeeds again.
    second = run("demo", "--dir", "d", cwd=work, env=env)
    assert second.returncode == 0, second.stderr


def test_demo_refuses_a_directory_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    result = run("demo", "--dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert "--dir" in result.stderr and "not empty" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_demo_on_a_busy_port_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run("demo", "--dir", "d", "--port", str(port), cwd=tmp_path)
    assert result.returncode == 14
    assert f"k8s-mirror: error: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_keep_serving_lets_a_user_repeat_the_sync_by_hand(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [PROGRAM, "demo", "--dir", "d", "--keep-serving"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops" in line:
                break
        assert any("they are, until Ctrl-C" in line for line in lines), "".join(lines)
        by_hand = run("sync", "--config", str(tmp_path / "d/mirror.toml"), cwd=tmp_path)
        assert by_hand.returncode == 0, by_hand.stderr
        assert "fetched 0 files" in by_hand.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert proc.stdout is not None
        proc.stdout.close()
