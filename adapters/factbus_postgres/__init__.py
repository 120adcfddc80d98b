"""factbus postgres adapter (in progress)."""
