"""A driver that runs ``k8s-mirror sync`` in forked children and kill -9s them on request.

Importing the command line costs about a second (sigstore's stack); a torture run kills dozens
of syncs, so this process imports it once and forks a child per run, which starts syncing at
once. The test talks to it over stdin/stdout, one JSON object a line:

    {"config": "/path/mirror.toml", "kill_after_s": 0.42}   (a negative delay: never kill)
    -> {"killed": true, "exit_code": null, "elapsed_s": 0.42}
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from mirror.cli import main as cli_main


def _child(config: str) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    code = 1
    try:
        cli_main(["sync", "--config", config, "--no-progress"])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os._exit(code)


def _run(config: str, kill_after_s: float) -> dict[str, object]:
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(config)
    deadline = started + kill_after_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return {
                "killed": False,
                "exit_code": os.waitstatus_to_exitcode(status),
                "elapsed_s": time.monotonic() - started,
            }
        if kill_after_s >= 0 and time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"killed": True, "exit_code": None, "elapsed_s": time.monotonic() - started}
        time.sleep(0.002)


def main() -> None:
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        print(json.dumps(_run(request["config"], float(request["kill_after_s"]))), flush=True)


if __name__ == "__main__":
    main()
