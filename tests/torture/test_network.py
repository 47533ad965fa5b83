"""A hostile network, through the CLI: every fault ends in a clear outcome, never a hang, a
traceback, or an unverified file served.

Faults come from the fake dl.k8s.io (per path, consumed one per request) and, for what an
aiohttp server cannot be made to do, from a raw asyncio server (``tests/fakes/hostile.py``).
"""

from __future__ import annotations

import pytest

from tests.conftest import Env
from tests.fakes.dlserver import Fault
from tests.fakes.hostile import RAW_MODES, RawServer
from tests.torture.invariants import tree_problems

pytestmark = pytest.mark.torture

KUBECTL = "release/v1.34.2/bin/linux/amd64/kubectl"
OLD_KUBECTL = "release/v1.33.6/bin/linux/amd64/kubectl"
FAST = {
    "read_timeout_s": 0.5,
    "min_rate_bytes_per_s": 1024,
    "min_rate_window_s": 1,
    "max_file_size_bytes": 8 << 20,
}


async def sync(env: Env) -> tuple[int, str]:
    result = await env.cli("sync", "--config", str(env.config_path), "--no-progress")
    assert "Traceback" not in result.stderr, result.stderr
    return result.exit_code, result.stderr


def wanted(names: tuple[str, ...] = ("kubectl", "kubeadm", "kubelet")) -> dict[str, list[str]]:
    return {"v1.34.2": [f"bin/linux/amd64/{n}" for n in names]}


@pytest.mark.parametrize(
    ("faults", "exit_code"),
    [
        (["truncate"], 0),
        (["corrupt"], 0),
        (["corrupt", "corrupt"], 5),
        ([Fault("429", retry_after_s=0)] * 3, 0),
        ([Fault("429", retry_after_s=0)] * 12, 6),
        (["503"] * 3, 0),
        (["503"] * 12, 6),
        (["reset", "reset"], 0),
        ([Fault("slow", stall_s=5, after_bytes=10)], 0),
        # A byte every 0.3 s never trips a 0.5 s read timeout; the rate guard cuts it and
        # the next attempt resumes (before: hours for one file).
        ([Fault("trickle", stall_s=0.3)], 0),
        ([Fault("trickle", stall_s=0.3)] * 12, 6),
        (["lie-long"], 0),
        (["lie-short"], 0),
        (["gzip-bomb"], 0),
        (["redirect-loop"] * 200, 6),
    ],
    ids=lambda v: str(v) if isinstance(v, int) else f"{getattr(v[0], 'kind', v[0])}x{len(v)}",
)
async def test_network_fault(env: Env, faults: list[str | Fault], exit_code: int) -> None:
    env.write_config(upstream=FAST)
    env.dl.faults.add(KUBECTL, *faults)
    code, stderr = await sync(env)
    assert code == exit_code, stderr
    assert tree_problems(env.root, env.tree, wanted()) == []
    served = env.root / KUBECTL
    if exit_code == 0:
        assert served.read_bytes() == env.tree.files[KUBECTL]
    else:
        assert not served.exists()
        assert not (env.root / "release/stable.txt").exists()


async def test_an_endless_body_stops_at_a_small_multiple_of_a_known_size(env: Env) -> None:
    # The tree holds kubectl of v1.33.6: v1.34.2's cannot plausibly be 4x larger (+16 MiB).
    env.write_config(upstream={**FAST, "max_file_size_bytes": 1 << 30})
    env.write_config(select={"versions": ["stable-1.33"]})
    assert (await sync(env))[0] == 0
    env.write_config(select={"versions": ["stable-1.33", "stable"]})
    env.dl.faults.add(KUBECTL, "endless")
    code, stderr = await sync(env)
    assert code == 5, stderr
    assert "the most a file of its kind and size can be" in stderr
    assert not (env.root / KUBECTL).exists()
    partial = env.root / ".k8s-mirror/partial/v1.34.2/bin/linux/amd64/kubectl"
    assert not partial.exists()


async def test_an_endless_body_stops_at_max_file_size(env: Env) -> None:
    env.write_config(upstream=FAST)
    env.dl.faults.add(KUBECTL, "endless")
    code, stderr = await sync(env)
    assert code == 5, stderr
    assert "upstream.max_file_size_bytes" in stderr
    assert tree_problems(env.root, env.tree, wanted()) == []


async def test_a_total_deadline_per_file(env: Env) -> None:
    # The rate guard off: only upstream.file_timeout_s stops the trickle.
    env.write_config(
        upstream={**FAST, "min_rate_bytes_per_s": 0, "file_timeout_s": 1.5, "retries": 1}
    )
    env.dl.faults.add(KUBECTL, *[Fault("trickle", stall_s=0.2)] * 2)
    code, stderr = await sync(env)
    assert code == 6, stderr
    assert "upstream.file_timeout_s" in stderr


@pytest.mark.parametrize("mode", RAW_MODES)
async def test_a_server_that_speaks_no_http(env: Env, mode: str) -> None:
    async with RawServer(mode) as raw:
        env.write_config(upstream={**FAST, "url": raw.url, "retries": 1})
        code, stderr = await sync(env)
    assert code == 4, stderr
    assert raw.connections >= 1
    assert not env.root.exists() or env.listing() == []


async def test_bytes_received_before_a_cut_are_kept_for_resume(env: Env) -> None:
    # A small file's half body and the close arrive together: the client has the bytes in
    # its buffer when the cut is reported, and the next attempt must resume after them.
    env.write_config(upstream=FAST)
    env.dl.faults.add(KUBECTL, "truncate")
    code, stderr = await sync(env)
    assert code == 0, stderr
    first, second = env.dl.requests(KUBECTL)
    half = len(env.tree.files[KUBECTL]) // 2
    assert first.range is None
    assert (second.range, second.status) == (f"bytes={half}-", 206)
