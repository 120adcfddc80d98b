"""Jinaga interoperability (DESIGN.md §8): the graph codec, the specification
subset, feeds over the sidecar's archive, and the HTTP endpoints jinaga.js
clients speak."""
