"""factbus's version, in a module of its own so that any part (the command line,
tracing) can name it without importing the whole package.

It must equal ``version`` in pyproject.toml (tests/unit/test_layering.py checks).
"""

__version__ = "0.1.0"
