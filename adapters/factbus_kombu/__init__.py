"""factbus kombu adapter (in progress)."""
