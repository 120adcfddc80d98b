"""factbus kafka adapter (in progress)."""
