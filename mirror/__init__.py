"""k8s-mirror: mirror Kubernetes releases from dl.k8s.io into a verified local tree."""

__version__ = "0.1.0"
