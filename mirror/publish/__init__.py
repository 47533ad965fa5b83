"""Publishing the verified tree to S3-compatible object storage, and checking it there.

One module per job: ``target`` (s3:// URLs and keys), ``tree`` (the one reader of the local
tree), ``client`` (the S3 boundary: aiobotocore calls, retries, errors -> ours), ``objects``
(headers, the published index document), ``plan`` (what to upload, pure), ``upload`` (hash
while reading, single or multipart PUT, read-back confirm), ``run`` (the publish sequence:
trust root, payload, manifest, index, markers last), ``audit`` (``verify --remote``) and
``prune`` (remote prune behind the mass-delete guard).
"""
