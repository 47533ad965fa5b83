"""``k8s-mirror export`` / ``import`` end to end: transfer sets across a (simulated) air gap.

The source tree is synced from the fake dl.k8s.io; the far side is an empty directory that only
ever sees the set. Damaged, incomplete and hostile sets must change nothing at the far side.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mirror.config import VerifyConfig
from mirror.errors import ConfigError, IntegrityError, TreeVerifyError
from mirror.transfer import export_set, import_set, parse_since, parse_size
from tests.conftest import Env

KUBECTL = "release/v1.34.2/bin/linux/amd64/kubectl"


def tree_digests(root: Path) -> list[tuple[str, str]]:
    """Every served file (state dir excluded) with its sha256, sorted."""
    return sorted(
        (str(p.relative_to(root)), hashlib.sha256(p.read_bytes()).hexdigest())
        for p in root.rglob("*")
        if p.is_file() and ".k8s-mirror" not in p.parts
    )


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Inode and mtime of every file but the lock: what 'nothing rewritten' means."""
    return {
        str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and p.name != "lock"
    }


def staging_empty(root: Path) -> bool:
    staging = root / ".k8s-mirror/staging"
    return not staging.exists() or not any(staging.iterdir())


async def export(env: Env, out: Path, *args: str, root: Path | None = None) -> dict[str, object]:
    result = await env.cli(
        "export", "--root", str(root or env.root), "--output", str(out), "--max-part-size", "16K",
        *args,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    toc: dict[str, object] = json.loads((out / "toc.json").read_text())
    return toc


async def import_(env: Env, source: Path, dest: Path, *args: str) -> tuple[int, str, str]:
    """Import as an offline site does: with the trust root it pinned (the fake stack's)."""
    if "--trusted-root" not in args:
        args = (*args, "--trusted-root", str(env.trusted_root))
    result = await env.cli("import", str(source), "--root", str(dest), *args)
    return result.exit_code, result.stdout, result.stderr


async def test_first_import_refuses_a_trust_root_that_travelled_with_the_set(env: Env) -> None:
    """Whoever could forge the set could forge the trust root riding along with it."""
    assert (await env.sync()).exit_code == 0
    await export(env, env.tmp / "set")
    dest = env.tmp / "offline"
    result = await env.cli("import", str(env.tmp / "set"), "--root", str(dest))
    assert result.exit_code == 2, result.stderr
    assert "--trusted-root" in result.stderr
    assert not (dest / "release").exists() or not any((dest / "release").iterdir())


def toc_release_files(toc: dict[str, object]) -> set[str]:
    files = toc["files"]
    assert isinstance(files, list)
    return {
        f["path"]
        for f in files
        if f["path"].startswith("release/v") and not f["path"].endswith(".txt")
    }


# --- round trips ------------------------------------------------------------------------------


async def test_full_round_trip_into_an_empty_root_equals_the_source(env: Env) -> None:
    env.write_config(select={"versions": ["stable", "stable-1.33"]})
    assert (await env.sync()).exit_code == 0
    toc = await export(env, env.tmp / "set")

    parts = toc["parts"]
    assert isinstance(parts, list) and len(parts) > 2
    assert all(p["size"] <= 16 * 1024 for p in parts)
    assert sorted(p.name for p in (env.tmp / "set").iterdir()) == sorted(
        [p["name"] for p in parts] + ["toc.json"]
    )
    # The only state that travels is the manifests; never staging, reports, the lock.
    names = [f["path"] for f in toc["files"]]  # type: ignore[attr-defined]
    state = [n for n in names if n.startswith(".k8s-mirror/")]
    assert state == [".k8s-mirror/manifests/v1.33.6.json", ".k8s-mirror/manifests/v1.34.2.json"]
    assert toc["markers"] == {"stable": "v1.34.2", "stable-1.33": "v1.33.6"}

    dest = env.tmp / "far"
    code, out, err = await import_(env, env.tmp / "set", dest)
    assert code == 0, err
    assert "imported" in out and "new: v1.33.6, v1.34.2" in out
    # First import into an empty tree: the set's trust root is used, and said so.
    assert "trust root" in err
    assert tree_digests(dest) == tree_digests(env.root)
    assert staging_empty(dest)
    check = await env.cli("verify", "--root", str(dest))
    assert check.exit_code == 0, check.stdout + check.stderr
    assert "8 signatures checked" in check.stdout

    # The parts are one plain tar stream: cat + tar gives the same tree, no k8s-mirror needed.
    stream = b"".join((env.tmp / "set" / p["name"]).read_bytes() for p in parts)
    plain = env.tmp / "untarred"
    with tarfile.open(fileobj=io.BytesIO(stream)) as tar:
        tar.extractall(plain, filter="data")
    assert tree_digests(plain) == tree_digests(env.root)


async def test_same_import_twice_is_a_no_op(env: Env) -> None:
    assert (await env.sync()).exit_code == 0
    await export(env, env.tmp / "set")
    dest = env.tmp / "far"
    assert (await import_(env, env.tmp / "set", dest, "--trusted-root", str(env.trusted_root)))[
        0
    ] == 0
    before = snapshot(dest)
    code, out, err = await import_(env, env.tmp / "set", dest)
    assert code == 0, err
    assert out.startswith("nothing to import")
    assert snapshot(dest) == before


async def test_incremental_export_carries_only_new_files_and_imports_onto_the_base(
    env: Env,
) -> None:
    assert (await env.sync()).exit_code == 0
    await export(env, env.tmp / "full")
    before = set(dict(tree_digests(env.root)))

    # Upstream publishes v1.35.0 and stable moves; the mirror also adds a platform to v1.34.2.
    env.tree.add_release("v1.35.0", platforms=("linux/amd64", "linux/arm64"))
    env.tree.set_marker("stable", "v1.35.0")
    env.write_config(
        select={"versions": ["stable", "v1.34.2"], "platforms": ["linux/amd64", "linux/arm64"]}
    )
    assert (await env.sync()).exit_code == 0
    new = set(dict(tree_digests(env.root))) - before - {"release/stable.txt"}
    assert any(n.startswith("release/v1.34.2/bin/linux/arm64/") for n in new)

    toc = await export(env, env.tmp / "delta", "--since", str(env.tmp / "full"))
    assert toc["incremental"] is True
    assert toc_release_files(toc) == new
    releases = toc["releases"]
    assert isinstance(releases, dict)
    assert set(releases["v1.34.2"]["requires"]) and not releases["v1.35.0"]["requires"]

    # The delta alone cannot complete v1.34.2: refused before anything is promoted.
    lone = env.tmp / "lone"
    code, _, err = await import_(env, env.tmp / "delta", lone)
    assert code == ConfigError.exit_code
    assert "release/v1.34.2" in err and "import the set it was made on top of first" in err
    assert tree_digests(lone) == [] and staging_empty(lone)

    dest = env.tmp / "far"
    assert (await import_(env, env.tmp / "full", dest))[0] == 0
    code, out, err = await import_(env, env.tmp / "delta", dest)
    assert code == 0, err
    assert "new: v1.35.0" in out and "added to: v1.34.2" in out
    assert "marker stable -> v1.35.0" in out
    assert tree_digests(dest) == tree_digests(env.root)
    check = await env.cli("verify", "--root", str(dest))
    assert check.exit_code == 0, check.stdout + check.stderr


async def test_since_a_run_report_exports_what_that_run_brought(env: Env) -> None:
    assert (await env.sync()).exit_code == 0
    # Report times have one-second resolution and --since errs on the side of carrying more:
    # start the next run in a later second so the first run's files are clearly older.
    time.sleep(1.05 - time.time() % 1)
    env.tree.add_release("v1.35.0", platforms=("linux/amd64",))
    env.write_config(select={"versions": ["v1.35.0"]})
    assert (await env.sync()).exit_code == 0
    report = sorted((env.root / ".k8s-mirror/reports").glob("*.json"))[-1]
    toc = await export(env, env.tmp / "delta", "--since", str(report))
    assert {f.split("/")[1] for f in toc_release_files(toc)} == {"v1.35.0"}
    assert toc["since"]["mode"] == "time"  # type: ignore[index]


# --- damaged and hostile sets -----------------------------------------------------------------


def truncate(part: Path) -> None:
    part.write_bytes(part.read_bytes()[:-700])


def flip_byte(part: Path) -> None:
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x40
    part.write_bytes(bytes(data))


def remove(part: Path) -> None:
    part.unlink()


@pytest.mark.parametrize("damage", [truncate, flip_byte, remove])
async def test_damaged_part_is_named_and_nothing_is_promoted(
    env: Env, damage: Callable[[Path], None]
) -> None:
    assert (await env.sync()).exit_code == 0
    await export(env, env.tmp / "set")
    dest = env.tmp / "far"
    dest.mkdir()
    damage(env.tmp / "set/part-0002.tar")
    code, _, err = await import_(env, env.tmp / "set", dest)
    assert code == IntegrityError.exit_code
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "part-0002.tar" in lines[0], err
    assert tree_digests(dest) == [] and staging_empty(dest)


def rewrite_set(set_dir: Path, edits: dict[str, Callable[[bytes], bytes]]) -> None:
    """Change members of a set in place (same sizes) and rebuild its toc so every hash in it
    matches again: what an attacker with write access to the media can do."""
    toc = json.loads((set_dir / "toc.json").read_text())
    stream = bytearray(b"".join((set_dir / p["name"]).read_bytes() for p in toc["parts"]))
    with tarfile.open(fileobj=io.BytesIO(bytes(stream))) as tar:
        where = {m.name: (m.offset_data, m.size) for m in tar.getmembers()}
    for name, edit in edits.items():
        start, size = where[name]
        new = edit(bytes(stream[start : start + size]))
        assert len(new) == size
        stream[start : start + size] = new
        for entry in toc["files"]:
            if entry["path"] == name:
                entry["sha256"] = hashlib.sha256(new).hexdigest()
        if name.startswith(".k8s-mirror/manifests/"):
            toc["releases"][name.rsplit("/", 1)[1][: -len(".json")]]["manifest"] = json.loads(new)
    offset = 0
    for part in toc["parts"]:
        chunk = bytes(stream[offset : offset + part["size"]])
        (set_dir / part["name"]).write_bytes(chunk)
        part["sha256"] = hashlib.sha256(chunk).hexdigest()
        offset += part["size"]
    (set_dir / "toc.json").write_text(json.dumps(toc))


def flipped(data: bytes) -> bytes:
    return data[:200] + bytes([data[200] ^ 0x01]) + data[201:]


async def test_tampered_file_in_a_rehashed_set_fails_offline_verification(env: Env) -> None:
    assert (await env.sync()).exit_code == 0
    await export(env, env.tmp / "set")
    rewrite_set(env.tmp / "set", {KUBECTL: flipped})
    dest = env.tmp / "far"
    code, _, err = await import_(
        env, env.tmp / "set", dest, "--trusted-root", str(env.trusted_root)
    )
    assert code == TreeVerifyError.exit_code
    assert f"modified: {KUBECTL}" in err
    assert tree_digests(dest) == [] and staging_empty(dest)


async def test_consistently_forged_digests_still_fail_the_signature(env: Env) -> None:
    """Content, sidecars, SUMS and the manifest all rewritten to agree: only the Sigstore
    bundle can tell, and it does."""
    assert (await env.sync()).exit_code == 0
    await export(env, env.tmp / "set")
    original = (env.root / KUBECTL).read_bytes()
    forged = flipped(original)
    swaps = {
        hashlib.sha256(original).hexdigest(): hashlib.sha256(forged).hexdigest(),
        hashlib.sha512(original).hexdigest(): hashlib.sha512(forged).hexdigest(),
    }

    def swap(data: bytes) -> bytes:
        for old, new in swaps.items():
            data = data.replace(old.encode(), new.encode())
        return data

    base = "release/v1.34.2/"
    edits: dict[str, Callable[[bytes], bytes]] = {KUBECTL: lambda _: forged}
    edits |= {KUBECTL + s: swap for s in (".sha256", ".sha512")}
    edits |= {base + s: swap for s in ("SHA256SUMS", "SHA512SUMS")}
    # The SUMS changed, so their sidecars change too; then every changed file's manifest record.
    for sums in ("SHA256SUMS", "SHA512SUMS"):
        new_sums = swap((env.root / base / sums).read_bytes())
        for algo in ("sha256", "sha512"):
            old_side = (env.root / base / f"{sums}.{algo}").read_bytes()
            swaps[old_side.decode()] = hashlib.new(algo, new_sums).hexdigest()
            edits[f"{base}{sums}.{algo}"] = swap
    for name in list(edits):
        old = (env.root / name).read_bytes()
        swaps[hashlib.sha256(old).hexdigest()] = hashlib.sha256(edits[name](old)).hexdigest()
    edits[".k8s-mirror/manifests/v1.34.2.json"] = swap
    rewrite_set(env.tmp / "set", edits)

    dest = env.tmp / "far"
    code, _, err = await import_(
        env, env.tmp / "set", dest, "--trusted-root", str(env.trusted_root)
    )
    assert code == TreeVerifyError.exit_code, err
    assert f"bad-bundle: {KUBECTL}.sigstore.json" in err
    assert "modified" not in err and "bad-sidecar" not in err
    assert tree_digests(dest) == [] and staging_empty(dest)


def hostile_tar(path: Path, info: tarfile.TarInfo, data: bytes = b"") -> bytes:
    """A tar holding one hostile member, as a file at ``path``; returns its bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    info.size = 4 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(
    ("info", "reason"),
    [
        (member("release/v1.34.2/kubectl", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
        (member("release/v1.34.2/kubectl", tarfile.LNKTYPE, "/etc/passwd"), "hard link"),
        (member("release/v1.34.2/dev", tarfile.CHRTYPE), "device"),
        (member("release/v1.34.2", tarfile.DIRTYPE), "directory"),
        (member("release/v1.34.2/../../../evil"), "'..'"),
        (member("/etc/evil"), "absolute"),
        (member("release/v1.34.2/.hidden"), "starts with '.'"),
        (member(".k8s-mirror/lock"), "starts with '.'"),
        (member(".k8s-mirror/manifests/evil.json"), "only state a set carries"),
        (member("evil.sh"), "not a file a mirror tree carries"),
    ],
    ids=["symlink", "hardlink", "device", "directory", "dotdot", "absolute", "hidden", "lock",
         "state", "stray"],
)  # fmt: skip
def test_hostile_archive_member_is_refused(
    tmp_path: Path, info: tarfile.TarInfo, reason: str
) -> None:
    # In-process (these are many, and a subprocess costs 0.4 s); the CLI's one-line rendering
    # of the same errors is covered by the test below.
    hostile_tar(tmp_path / "evil.tar", info, b"evil" if info.isreg() else b"")
    dest = tmp_path / "far"
    with pytest.raises(IntegrityError) as caught:
        import_set(dest, tmp_path / "evil.tar", identities=VerifyConfig().identities)
    message = str(caught.value)
    assert "\n" not in message and reason in message and repr(info.name) in message
    assert tree_digests(dest) == [] and staging_empty(dest)
    assert not (tmp_path / "evil").exists() and not Path("/etc/evil").exists()


async def test_symlink_in_an_honestly_hashed_set_is_refused(env: Env) -> None:
    set_dir = env.tmp / "set"
    set_dir.mkdir()
    link = member("release/v1.34.2/kubectl", tarfile.SYMTYPE, "/etc/passwd")
    stream = hostile_tar(set_dir / "part-0001.tar", link)
    empty = hashlib.sha256(b"").hexdigest()
    manifest = {
        "format": 1,
        "version": "v1.34.2",
        "files": {"kubectl": {"size": 0, "sha256": empty}},
    }
    toc = {
        "format": 1,
        "kind": "k8s-mirror-transfer-set",
        "parts": [
            {
                "name": "part-0001.tar",
                "size": len(stream),
                "sha256": hashlib.sha256(stream).hexdigest(),
            }
        ],
        "files": [{"path": link.name, "size": 0, "sha256": empty}],
        "releases": {"v1.34.2": {"manifest": manifest}},
        "markers": {},
    }
    (set_dir / "toc.json").write_text(json.dumps(toc))
    dest = env.tmp / "far"
    code, _, err = await import_(env, set_dir, dest)
    assert code == IntegrityError.exit_code
    assert "'release/v1.34.2/kubectl' is a symbolic link" in err
    assert tree_digests(dest) == [] and staging_empty(dest)


async def test_export_refuses_a_damaged_tree_and_leaves_nothing(env: Env) -> None:
    assert (await env.sync()).exit_code == 0
    path = env.root / KUBECTL
    path.write_bytes(flipped(path.read_bytes()))
    out = env.tmp / "set"
    result = await env.cli("export", "--root", str(env.root), "--output", str(out))
    assert result.exit_code == IntegrityError.exit_code
    assert KUBECTL in result.stderr and "run k8s-mirror verify" in result.stderr
    assert not out.exists()


# --- option parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"), [("4G", 4 << 30), ("700M", 700 << 20), ("64k", 64 << 10), ("2048", 2048)]
)
def test_part_sizes_are_binary_multiples(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "4X", "-1", "1.5G", "100"])
def test_bad_part_sizes_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="--max-part-size"):
        parse_size(text)


def test_since_dates_are_utc_unless_they_say_otherwise() -> None:
    assert parse_since("2025-06-01").timestamp == 1748736000.0
    assert parse_since("2025-06-01T02:00:00+02:00").timestamp == 1748736000.0
    assert parse_since("2025-06-01T00:00:00Z").timestamp == 1748736000.0
    with pytest.raises(ConfigError, match="--since"):
        parse_since("last tuesday")


async def test_since_a_future_date_carries_no_release_file(env: Env) -> None:
    assert (await env.sync()).exit_code == 0
    result = export_set(env.root, env.tmp / "delta", since="2999-01-01")
    assert result.releases == {} and result.incremental
    toc = json.loads((env.tmp / "delta/toc.json").read_text())
    assert toc_release_files(toc) == set() and toc["markers"] == {"stable": "v1.34.2"}


async def test_archive_with_a_huge_pax_header_is_refused_before_it_is_read(env: Env) -> None:
    """A small .tar.gz may declare a gigantic pax header; tarfile would buffer it whole."""
    import gzip
    import tarfile as tarlib

    size = 64 << 20
    header = tarlib.TarInfo("././@PaxHeader")
    header.type = tarlib.XHDTYPE
    header.size = size
    bomb = env.tmp / "bomb.tar.gz"
    with gzip.open(bomb, "wb") as out:
        out.write(header.tobuf(format=tarlib.USTAR_FORMAT))
        zeros = bytes(1 << 20)
        for _ in range(size >> 20):
            out.write(zeros)
    assert bomb.stat().st_size < 1 << 20
    dest = env.tmp / "offline"
    code, _, err = await import_(env, bomb, dest)
    assert code == 5, err
    assert "extended header" in err
    assert not (dest / "release").exists() or not any((dest / "release").iterdir())


async def test_archive_files_without_a_preceding_manifest_are_not_written(env: Env) -> None:
    """Otherwise a small compressed archive could fill the root's disk before any check."""
    import io
    import tarfile as tarlib

    bomb = env.tmp / "bomb.tar"
    with tarlib.open(bomb, "w") as tar:
        data = bytes(1 << 20)
        info = tarlib.TarInfo("release/v1.34.2/bin/linux/amd64/kubectl")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    dest = env.tmp / "offline"
    code, _, err = await import_(env, bomb, dest)
    assert code == 5, err
    assert "not in a manifest that precedes it" in err
    staged = dest / ".k8s-mirror/staging"
    assert not staged.exists() or not any(p.is_file() for p in staged.rglob("*"))
