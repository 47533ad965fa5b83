"""A LOCAL DEMONSTRATION of k8s-mirror that needs no network: look-alikes of dl.k8s.io and of
the Sigstore services, and ``k8s-mirror demo``, which runs the real ``sync`` and ``verify``
against them.

- ``release``: generates a release tree in the exact upstream formats (SUMS, sidecars, SBOMs),
  from the platform rules in ``matrix`` and the file bodies of ``contents``;
- ``dlserver``: serves it the way dl.k8s.io does (Range, ETag, redirects, fault injection);
- ``sigstore_stack``: a throwaway Fulcio-style CA and CT log (``fulcio``) and Rekor log
  (``rekor``) whose signatures the real sigstore-python verifier accepts;
- ``runner``: the ``demo`` command.

The tests run these very modules (``tests/fakes`` re-exports them). Everything they sign is
signed by a CA created for one process: a trust root written from here must never be used to
verify real data.
"""
