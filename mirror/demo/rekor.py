"""The Rekor side of the demo's Sigstore look-alike: hashedrekord 0.0.1 entries in an RFC 6962
Merkle tree, served on Rekor v1's API shapes with inclusion proofs, signed checkpoints and SETs.

Part of a LOCAL DEMONSTRATION: its log key is generated per process; see ``sigstore_stack``.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any, Literal

import rfc8785
from aiohttp import web
from aiohttp.typedefs import Handler
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mirror.demo.fulcio import b64, key_id


def _flip_first_byte(data: bytes) -> bytes:
    return bytes([data[0] ^ 0x01]) + data[1:]


def _leaf_hash(body: bytes) -> bytes:
    """RFC 6962 leaf hash; also the Rekor entry UUID (as hex)."""
    return hashlib.sha256(b"\x00" + body).digest()


def _node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def hashedrekord_body(sha256_digest: bytes, signature: bytes, cert_pem: bytes) -> bytes:
    """The RFC 8785 canonical hashedrekord 0.0.1 body Rekor stores for a blob signature."""
    entry: dict[str, Any] = {
        "apiVersion": "0.0.1",
        "kind": "hashedrekord",
        "spec": {
            "data": {"hash": {"algorithm": "sha256", "value": sha256_digest.hex()}},
            "signature": {
                "content": b64(signature),
                "publicKey": {"content": b64(cert_pem)},
            },
        },
    }
    return rfc8785.dumps(entry)


def rekor_uuid(body: bytes) -> str:
    """The 64-hex Rekor UUID of an entry body: hex(sha256(0x00 || body))."""
    return _leaf_hash(body).hex()


# --------------------------------------------------------------------------------------------
# RFC 6962 Merkle tree (recursive definitions; log sizes in tests are small)
# --------------------------------------------------------------------------------------------


def _split(n: int) -> int:
    """Largest power of two strictly smaller than n (n >= 2)."""
    k = 1
    while k << 1 < n:
        k <<= 1
    return k


class MerkleTree:
    """MTH and PATH of RFC 6962 over an append-only list of leaf hashes. A subtree's root never
    changes once its leaves exist, so each is computed once: answering a lookup costs
    O(log n) hashes, not a pass over the whole log (which, in the benchmark, made the
    look-alike's CPU compete with the client it serves)."""

    def __init__(self) -> None:
        self.leaves: list[bytes] = []
        self._roots: dict[tuple[int, int], bytes] = {}

    def root(self, lo: int = 0, hi: int | None = None) -> bytes:
        """MTH(D[lo:hi])."""
        hi = len(self.leaves) if hi is None else hi
        if hi - lo == 0:
            return hashlib.sha256(b"").digest()
        if hi - lo == 1:
            return self.leaves[lo]
        cached = self._roots.get((lo, hi))
        if cached is None:
            k = lo + _split(hi - lo)
            cached = self._roots[(lo, hi)] = _node_hash(self.root(lo, k), self.root(k, hi))
        return cached

    def inclusion_path(self, index: int, lo: int = 0, hi: int | None = None) -> list[bytes]:
        """PATH(m, D[lo:hi]) from RFC 6962 2.1.1, ordered leaf level first (as Rekor returns
        it)."""
        hi = len(self.leaves) if hi is None else hi
        if hi - lo <= 1:
            return []
        k = lo + _split(hi - lo)
        if index < k:
            return [*self.inclusion_path(index, lo, k), self.root(k, hi)]
        return [*self.inclusion_path(index, k, hi), self.root(lo, k)]


# --------------------------------------------------------------------------------------------
# Rekor-like log
# --------------------------------------------------------------------------------------------


@dataclass
class LogEntry:
    """One hashedrekord entry as Rekor holds it."""

    body: bytes
    integrated_time: int
    log_index: int

    @property
    def uuid(self) -> str:
        return rekor_uuid(self.body)


_Tamper = Literal["inclusion_proof", "set", "checkpoint"]


class RekorLog:
    """An append-only hashedrekord log with Rekor v1's HTTP API (the parts clients use)."""

    # Rekor's entry UUIDs are prefixed with the 16-hex tree ID of the shard holding them.
    TREE_ID = 0x1A2B3C4D5E6F7081

    def __init__(self, name: str = "rekor.fake-sigstore.test") -> None:
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.log_id = key_id(self.key.public_key())
        self.tree_id_hex = f"{self.TREE_ID:016x}"
        # Checkpoint origin as Rekor v1 writes it: "<hostname> - <tree id in decimal>".
        self.origin = f"{name} - {self.TREE_ID}"
        self.entries: list[LogEntry] = []
        self.tree = MerkleTree()
        self._by_uuid: dict[str, LogEntry] = {}
        self._forgotten: set[str] = set()
        self._tampered: dict[str, set[_Tamper]] = {}
        self._failures: list[int] = []
        self.requests: list[tuple[str, str]] = []

    # -- log state -----------------------------------------------------------------------------

    def append(self, body: bytes, integrated_time: int) -> LogEntry:
        entry = LogEntry(body=body, integrated_time=integrated_time, log_index=len(self.entries))
        if entry.uuid in self._by_uuid:
            # Rekor refuses duplicates (409); the fake just hands back the existing entry.
            return self._by_uuid[entry.uuid]
        self.entries.append(entry)
        self.tree.leaves.append(_leaf_hash(body))
        self._by_uuid[entry.uuid] = entry
        return entry

    def _normalize(self, uuid: str) -> str | None:
        """64-hex UUID for a 64-hex UUID or an 80-hex entry UUID of this tree; else None."""
        uuid = uuid.lower()
        if len(uuid) == 80 and uuid[:16] == self.tree_id_hex:
            uuid = uuid[16:]
        if len(uuid) != 64 or any(c not in "0123456789abcdef" for c in uuid):
            return None
        return uuid

    def lookup(self, uuid: str) -> LogEntry | None:
        """The entry the server would serve for `uuid` (None if unknown or forgotten)."""
        key = self._normalize(uuid)
        if key is None or key in self._forgotten:
            return None
        return self._by_uuid.get(key)

    def _require(self, uuid: str) -> str:
        key = self._normalize(uuid)
        if key is None or key not in self._by_uuid:
            raise KeyError(f"no such entry: {uuid}")
        return key

    def forget(self, uuid: str) -> None:
        """Serve 404 for this entry from now on (it stays in the tree; other proofs hold)."""
        self._forgotten.add(self._require(uuid))

    def tamper(self, uuid: str, what: _Tamper) -> None:
        """Make the server answer for this entry with a broken `what`."""
        self._tampered.setdefault(self._require(uuid), set()).add(what)

    def fail_next(self, count: int = 1, status: int = 503) -> None:
        """Answer the next `count` API requests with HTTP `status` (for retry tests)."""
        self._failures.extend([status] * count)

    # -- signing -------------------------------------------------------------------------------

    def _sign(self, data: bytes) -> bytes:
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))

    def signed_checkpoint(self, size: int, root: bytes) -> str:
        """A signed note: origin, size, base64 root, blank line, em-dash signature line."""
        note = f"{self.origin}\n{size}\n{b64(root)}\n"
        signature = self.log_id[:4] + self._sign(note.encode())
        return f"{note}\n\u2014 {self.name} {b64(signature)}\n"

    def signed_entry_timestamp(self, entry: LogEntry) -> bytes:
        """The SET: a signature over the RFC 8785 JSON of body/integratedTime/logID/logIndex."""
        payload: dict[str, str | int] = {
            "body": b64(entry.body),
            "integratedTime": entry.integrated_time,
            "logID": self.log_id.hex(),
            "logIndex": entry.log_index,
        }
        return self._sign(rfc8785.dumps(payload))

    # -- API answers ---------------------------------------------------------------------------

    def entry_uuid(self, uuid: str) -> str:
        """The 80-hex entry UUID (tree ID + UUID) Rekor keys its answers by."""
        return self.tree_id_hex + self._require(uuid)

    def response(self, uuid: str) -> dict[str, Any] | None:
        """The `GET /api/v1/log/entries/{uuid}` JSON for `uuid`, proven against the current
        tree (None where the server would answer 404)."""
        entry = self.lookup(uuid)
        if entry is None:
            return None
        size = len(self.tree.leaves)
        root = self.tree.root()
        proof = self.tree.inclusion_path(entry.log_index)
        checkpoint = self.signed_checkpoint(size, root)
        signed_entry_timestamp = self.signed_entry_timestamp(entry)

        tampered = self._tampered.get(entry.uuid, set())
        if "inclusion_proof" in tampered:
            # A wrong sibling hash; a one-entry tree has no siblings, so break the root instead
            # (the checkpoint keeps the true root).
            if proof:
                proof[0] = _flip_first_byte(proof[0])
            else:
                root = _flip_first_byte(root)
        if "set" in tampered:
            # Flip a bit in the signature's last byte: still well-formed DER, no longer valid.
            signed_entry_timestamp = signed_entry_timestamp[:-1] + bytes(
                [signed_entry_timestamp[-1] ^ 0x01]
            )
        if "checkpoint" in tampered:
            # Sign a different root: a valid signature over a note that disagrees with the proof.
            checkpoint = self.signed_checkpoint(size, _flip_first_byte(root))

        return {
            self.tree_id_hex + entry.uuid: {
                "body": b64(entry.body),
                "integratedTime": entry.integrated_time,
                "logID": self.log_id.hex(),
                "logIndex": entry.log_index,
                "verification": {
                    "inclusionProof": {
                        "checkpoint": checkpoint,
                        "hashes": [h.hex() for h in proof],
                        "logIndex": entry.log_index,
                        "rootHash": root.hex(),
                        "treeSize": size,
                    },
                    "signedEntryTimestamp": b64(signed_entry_timestamp),
                },
            }
        }

    def _find_proposed(self, proposed: Any) -> LogEntry | None:
        """Match a proposed hashedrekord (what `RekorClient` posts) by its canonical UUID."""
        try:
            if proposed["kind"] != "hashedrekord":
                return None
            spec = proposed["spec"]
            body = hashedrekord_body(
                bytes.fromhex(spec["data"]["hash"]["value"]),
                base64.b64decode(spec["signature"]["content"], validate=True),
                base64.b64decode(spec["signature"]["publicKey"]["content"], validate=True),
            )
        except (KeyError, TypeError, ValueError):
            return None
        return self.lookup(rekor_uuid(body))

    # -- HTTP ----------------------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application serving the Rekor v1 API subset."""

        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            self.requests.append((request.method, request.path))
            if self._failures:
                status = self._failures.pop(0)
                return _error(status, "injected failure")
            return await handler(request)

        async def get_entry(request: web.Request) -> web.Response:
            uuid = request.match_info["uuid"]
            if self._normalize(uuid) is None:
                return _error(400, f"invalid entry UUID: {uuid}")
            body = self.response(uuid)
            if body is None:
                return _error(404, "entry not found")
            return web.json_response(body)

        async def get_entry_by_index(request: web.Request) -> web.Response:
            try:
                index = int(request.query["logIndex"])
                entry = self.entries[index]
            except (KeyError, ValueError, IndexError):
                return _error(404, "entry not found")
            body = self.response(entry.uuid)
            return web.json_response(body) if body is not None else _error(404, "entry not found")

        async def retrieve(request: web.Request) -> web.Response:
            try:
                query = await request.json()
            except ValueError:
                return _error(400, "request body is not JSON")
            if not isinstance(query, dict):
                return _error(400, "request body must be an object")
            found: list[LogEntry] = []
            for uuid in query.get("entryUUIDs") or []:
                if isinstance(uuid, str) and (entry := self.lookup(uuid)) is not None:
                    found.append(entry)
            for index in query.get("logIndexes") or []:
                in_range = isinstance(index, int) and 0 <= index < len(self.entries)
                if in_range and (entry := self.lookup(self.entries[index].uuid)) is not None:
                    found.append(entry)
            for proposed in query.get("entries") or []:
                if (entry := self._find_proposed(proposed)) is not None:
                    found.append(entry)
            answers = [self.response(entry.uuid) for entry in found]
            return web.json_response([a for a in answers if a is not None])

        async def log_info(request: web.Request) -> web.Response:
            root = self.tree.root()
            return web.json_response(
                {
                    "inactiveShards": [],
                    "rootHash": root.hex(),
                    "signedTreeHead": self.signed_checkpoint(len(self.tree.leaves), root),
                    "treeID": str(self.TREE_ID),
                    "treeSize": len(self.tree.leaves),
                }
            )

        async def public_key(request: web.Request) -> web.Response:
            pem = self.key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            return web.Response(body=pem, content_type="application/x-pem-file")

        app = web.Application(middlewares=[record])
        app.router.add_get("/api/v1/log", log_info)
        app.router.add_get("/api/v1/log/publicKey", public_key)
        app.router.add_get("/api/v1/log/entries", get_entry_by_index)
        # `RekorClient` posts to ".../retrieve/" (trailing slash); curl users omit it.
        app.router.add_post("/api/v1/log/entries/retrieve", retrieve)
        app.router.add_post("/api/v1/log/entries/retrieve/", retrieve)
        app.router.add_get("/api/v1/log/entries/{uuid}", get_entry)
        return app


def _error(status: int, message: str) -> web.Response:
    # Rekor's error model: {"code": int, "message": str}.
    return web.json_response({"code": status, "message": message}, status=status)
