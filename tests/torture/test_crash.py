"""Crash consistency: dozens of seeded kill -9 points across a sync's phases.

Each cycle starts from an empty tree and kills a sync at a random instant (seeded: set
``TORTURE_SEED`` to replay one, ``TORTURE_KILLS`` for more points); the next run resumes from
what the killed one left. After every kill the invariants hold (``invariants.py``); when a run
finishes unkilled it must exit 0, the cycle ends, and the next starts from scratch. Finally a
completion run on the last killed state exits 0, fetches none of the files already verified
(in the tree or staged), and ``verify`` passes.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import Env
from tests.torture.invariants import tree_problems

pytestmark = pytest.mark.torture

KILLS = int(os.environ.get("TORTURE_KILLS", "50"))
SEED = int(os.environ.get("TORTURE_SEED", "11"))
VERSIONS = {"v1.34.2": "stable", "v1.33.6": "stable-1.33"}
NAMES = ("kubectl", "kubeadm", "kubelet")
BIG_BYTES = 3 << 20


class Killer:
    """The fork-and-kill driver (``killer.py``) as a subprocess of the test."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, cwd: Path) -> Killer:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).with_name("killer.py")),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=cwd,
        )
        killer = cls(proc)
        assert (await killer._read())["ready"]
        return killer

    async def _read(self) -> dict[str, object]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout=90)
        return dict(json.loads(line))

    async def run(self, config: Path, kill_after_s: float) -> dict[str, object]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(
            json.dumps({"config": str(config), "kill_after_s": kill_after_s}).encode() + b"\n"
        )
        await self.proc.stdin.drain()
        return await self._read()

    async def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        await self.proc.wait()


def wanted(env: Env) -> dict[str, list[str]]:
    out = {}
    for version in VERSIONS:
        files = []
        for base in [f"bin/linux/amd64/{n}" for n in NAMES] + ["kubernetes-release.spdx"]:
            files += [base] + [base + s for s in (".sha256", ".sha512", ".sig", ".cert")]
        out[version] = files
    return out


def phase(root: Path) -> str:
    """Where the kill landed, judged by what it left."""
    state = root / ".k8s-mirror"
    if not state.is_dir():
        return "startup"
    marks = list((root / "release").glob("*.txt"))
    releases = [p for p in (root / "release").iterdir() if p.is_dir()]
    if any(p.is_file() for p in (state / "partial").rglob("*")):
        return "download"
    if any((state / "staging").rglob("*.journal")):
        return "staging/promotion"
    if releases and len(marks) < len(VERSIONS):
        return "markers"
    return "planning" if not releases else "after-promotion"


def verified_now(root: Path) -> set[str]:
    """Primary files (by URL path) the tree or staging holds verified right now."""
    found = set()
    state = root / ".k8s-mirror"
    for version in VERSIONS:
        try:
            files = json.loads((state / "manifests" / f"{version}.json").read_text())["files"]
        except (OSError, ValueError, KeyError):
            files = {}
        for rel, record in files.items():
            path = root / "release" / version / rel
            if path.is_file() and path.stat().st_size == record["size"]:
                found.add(f"release/{version}/{rel}")
        journal = state / "staging" / f"{version}.journal"
        lines = journal.read_text(errors="replace").splitlines() if journal.exists() else []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            path = state / "staging" / version / entry["path"]
            if path.is_file() and path.stat().st_size == entry["record"]["size"]:
                found.add(f"release/{version}/{entry['path']}")
    return found


@pytest.mark.timeout(600)  # 50 kills take ~20 s on an idle 2-core machine; CI is not idle
async def test_kill_9_at_seeded_points_keeps_every_invariant(env: Env) -> None:
    for version in VERSIONS:
        key = f"release/{version}/bin/linux/amd64/kubectl"
        env.tree.replace_file(key, random.Random(version).randbytes(BIG_BYTES), resign=True)
    env.write_config(select={"versions": list(VERSIONS.values())})
    outside = env.tmp
    before_outside = {p.name for p in outside.iterdir()}
    killer = await Killer.start(env.tmp)
    rng = random.Random(SEED)
    phases: collections.Counter[str] = collections.Counter()
    completions = 0
    try:
        calibration = await killer.run(env.config_path, -1)
        assert calibration["exit_code"] == 0, calibration
        duration_s = float(calibration["elapsed_s"])  # type: ignore[arg-type]
        shutil.rmtree(env.root)
        kills = 0
        while kills < KILLS:
            # Half the points anywhere in a run, half late (promotion, markers): a resumed
            # run is short, so late points of a fresh run's scale land there.
            late = rng.random() < 0.5
            delay_s = rng.uniform(0.6, 1.1) if late else rng.uniform(0, 1.1)
            result = await killer.run(env.config_path, delay_s * duration_s)
            problems = tree_problems(
                env.root, env.tree, wanted(env), outside=outside, outside_expected=before_outside
            )
            assert problems == [], (kills, result, problems)
            if result["killed"]:
                kills += 1
                phases[phase(env.root)] += 1
                continue
            assert result["exit_code"] == 0, result
            completions += 1
            shutil.rmtree(env.root)
        # The completion run starts from the last killed state.
        result = await killer.run(env.config_path, rng.uniform(0, duration_s))
        if not result["killed"]:
            shutil.rmtree(env.root)
            await killer.run(env.config_path, duration_s / 2)
        verified = verified_now(env.root)
        env.dl.log.clear()
        done = await killer.run(env.config_path, -1)
    finally:
        await killer.stop()
    assert done["exit_code"] == 0, done
    refetched = sorted({r.key for r in env.dl.requests()} & verified)
    assert refetched == [], f"verified files fetched again: {refetched}"
    assert tree_problems(env.root, env.tree, wanted(env)) == []
    audit = await env.cli("verify", "--config", str(env.config_path))
    assert audit.exit_code == 0, audit.stdout + audit.stderr
    print(f"torture: seed {SEED}, {kills} kills {dict(phases)}, {completions} completed cycles")
