"""``python -m mirror`` runs the k8s-mirror command line."""

from mirror.cli import main

main()
