"""The terminal a person watches, checked in a real one (tmux): log lines never split a bar,
the bytes bar has a total and a percentage, and nothing follows the interruption message."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import Env
from tests.fakes.dlserver import Fault

PROGRAM = str(Path(sys.executable).parent / "k8s-mirror")
BAR_LINE = re.compile(r"^(files|bytes|kubelet): ")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}")
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR|DEBUG) ")

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


class Tmux:
    """One private tmux server (its own socket under the test's directory)."""

    def __init__(self, socket: Path) -> None:
        self.base = ["tmux", "-S", str(socket)]

    async def run(self, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            *self.base, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, err
        return out.decode()

    async def screen(self) -> list[str]:
        text = await self.run("capture-pane", "-p", "-J", "-S", "-", "-t", "demo")
        return [line.rstrip() for line in text.splitlines() if line.strip()]

    async def wait_for(self, predicate: object, *, limit_s: float = 60) -> list[str]:
        """Poll the screen until ``predicate(lines)`` holds (a wait, not a timing check)."""
        assert callable(predicate)
        for _ in range(int(limit_s / 0.1)):
            lines = await self.screen()
            if predicate(lines):
                return lines
            await asyncio.sleep(0.1)
        raise AssertionError("screen never showed it:\n" + "\n".join(await self.screen()))


async def test_bars_logs_and_interruption_in_a_real_terminal(env: Env) -> None:
    kubelet = "release/v1.34.2/bin/linux/amd64/kubelet"
    env.tree.put(kubelet, b"\x7fELF" + bytes(200_000))  # room to stall in the middle
    env.tree.replace_file(kubelet, env.tree.files[kubelet], resign=True)
    env.dl.faults.add("release/v1.34.2/bin/linux/amd64/kubeadm", "503")  # a retry log line
    env.dl.faults.add(kubelet, Fault("slow", stall_s=60, after_bytes=100_000))
    tmux = Tmux(env.tmp / "tmux.sock")
    exit_file = env.tmp / "exit-status"
    # tmux may leave an exited pane unreaped (pane_dead without a status), so a shell records
    # the exit status; its INT trap only keeps it alive until the program has finished.
    command = (
        f"sh -c 'trap true INT; {PROGRAM} sync --config {env.config_path}; echo $? > {exit_file}'"
    )
    await tmux.run("new-session", "-d", "-s", "demo", "-x", "150", "-y", "40", command)
    try:
        await tmux.run("set-option", "-t", "demo", "remain-on-exit", "on")
        lines = await tmux.wait_for(
            lambda ls: (
                any(line.startswith("bytes: ") and "%" in line for line in ls)
                and any("retry 1/" in line for line in ls)
            )
        )
        for line in lines:
            if BAR_LINE.match(line):
                assert not TIMESTAMP.search(line), f"a log line inside a bar: {line!r}"
            else:
                assert LOG_LINE.match(line), f"stray line: {line!r}"
                assert not re.search(r"%\||/s\]", line), f"a bar inside a log line: {line!r}"
        (bytes_bar,) = [line for line in lines if line.startswith("bytes: ")]
        # A total and a percentage: "bytes:  97%|####  | 207k/213k [...]"
        assert re.search(r"bytes: +\d+%\|.*\| *[\d.]+k?/[\d.]+k", bytes_bar), bytes_bar

        await tmux.run("send-keys", "-t", "demo", "C-c")
        for _ in range(300):  # until the program has exited, at most 30 s
            if exit_file.is_file() and exit_file.read_text().strip():
                break
            await asyncio.sleep(0.1)
        assert exit_file.read_text().strip() == "130", await tmux.screen()
        for _ in range(300):  # and tmux has read all it wrote (the pty is closed)
            if (await tmux.run("display-message", "-p", "-t", "demo", "#{pane_dead}")) == "1\n":
                break
            await asyncio.sleep(0.1)
        final = [line for line in await tmux.screen() if not line.startswith("Pane is dead")]
        assert final[-1] == "k8s-mirror: interrupted; the next run resumes", final
    finally:
        await tmux.run("kill-server")
