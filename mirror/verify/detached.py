"""The detached signature pair dl.k8s.io publishes beside a file: ``.sig`` and ``.cert``.

``<file>.sig`` is base64 of a DER ECDSA signature over the file's sha256; ``<file>.cert`` is
base64 of a PEM Fulcio leaf certificate. Both are tiny; the limits below bound what is fetched.
"""

from __future__ import annotations

import base64
import binascii

from cryptography import x509

from mirror.errors import SignatureError


def decode_signature(name: str, sig_text: bytes) -> tuple[str, bytes]:
    """(the base64 text as published, the DER signature) of ``<name>.sig``."""
    text = sig_text.decode("ascii", errors="replace").strip()
    try:
        der = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{name}.sig: not base64") from None
    if not der:
        raise SignatureError(f"{name}.sig: empty")
    return text, der


def decode_certificate(name: str, cert_text: bytes) -> tuple[str, x509.Certificate]:
    """(the base64 text as published, the certificate) of ``<name>.cert``."""
    text = cert_text.decode("ascii", errors="replace").strip()
    try:
        pem = base64.b64decode(text, validate=True)
        cert = x509.load_pem_x509_certificate(pem)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{name}.cert: not base64 of a PEM certificate") from None
    return text, cert
