"""Local look-alikes of dl.k8s.io and the Sigstore services, for tests and offline trials."""
