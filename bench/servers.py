"""The benchmark's servers on 127.0.0.1: nginx as the upstream, a delaying proxy (a slow
link in front of nginx or Rekor), and aiohttp apps in a loop of their own thread."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import aiohttp
from aiohttp import web


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Nginx:
    """nginx with its own config, pid, logs and temp dirs under ``work``; 127.0.0.1 only."""

    def __init__(self, work: Path, root: Path) -> None:
        self.dir = work / "nginx"
        self.port = free_port()
        self.access_log = self.dir / "access.log"
        for sub in ("tmp", "logs"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        user = "user root;" if os.geteuid() == 0 else ""
        temps = " ".join(
            f"{kind}_temp_path {self.dir / 'tmp' / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(
            f"{user}\nworker_processes 2;\npid {self.dir / 'nginx.pid'};\n"
            f"error_log {self.dir / 'error.log'};\nevents {{ worker_connections 1024; }}\n"
            f"http {{ access_log {self.access_log}; {temps}\n"
            "  sendfile on; tcp_nopush on; keepalive_requests 100000;\n"
            "  types { } default_type application/octet-stream;\n"
            f"  server {{ listen 127.0.0.1:{self.port}; root {root}; }}\n}}\n"
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def _cmd(self, *extra: str) -> list[str]:
        return [
            "nginx",
            "-p",
            str(self.dir),
            "-e",
            str(self.dir / "error.log"),
            "-c",
            str(self.conf),
            *extra,
        ]

    def start(self) -> None:
        subprocess.run(self._cmd(), check=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.05)
        raise SystemExit("nginx did not start; see " + str(self.dir / "error.log"))

    def stop(self) -> None:
        subprocess.run(self._cmd("-s", "stop"), check=False)

    def log_size(self) -> int:
        return self.access_log.stat().st_size if self.access_log.exists() else 0

    def release_requests(self, since_bytes: int) -> list[str]:
        """Request lines logged since ``since_bytes`` that went into a release directory."""
        time.sleep(0.2)  # nginx writes the access log line after the response
        with open(self.access_log, "rb") as log:
            log.seek(since_bytes)
            lines = log.read().decode(errors="replace").splitlines()
        paths = [line.split('"')[1].split()[1] for line in lines if '"' in line]
        return [p for p in paths if p.split("/release/", 1)[-1].count("/") >= 1]


def delaying_proxy(target: str, delay_s: float) -> web.Application:
    """Forward every request to ``target``, answering ``delay_s`` later (a slow link)."""

    async def startup(app: web.Application) -> None:
        app["client"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64), auto_decompress=False
        )

    async def cleanup(app: web.Application) -> None:
        await app["client"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(delay_s)
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        body = await request.read()
        async with app["client"].request(
            request.method, target + request.path_qs, headers=headers, data=body or None
        ) as upstream:
            response = web.StreamResponse(status=upstream.status)
            for key in ("Content-Type", "Content-Length", "ETag", "Last-Modified", "Content-Range"):
                if key in upstream.headers:
                    response.headers[key] = upstream.headers[key]
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(1 << 20):
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


class Background:
    """aiohttp apps on 127.0.0.1 in a loop of their own thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.runners: list[web.AppRunner] = []
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def serve(self, app: web.Application) -> str:
        async def start() -> str:
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            self.runners.append(runner)
            return f"http://127.0.0.1:{port}"

        return asyncio.run_coroutine_threadsafe(start(), self.loop).result()

    def close(self) -> None:
        async def stop() -> None:
            for runner in self.runners:
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result()
