"""img1688: match product photos against the 1688.com wholesale catalogue, in batch.

Data flows one way: discover -> preprocess -> search -> clean -> store.
See ``docs/architecture.md`` for the modules and how they fit.
"""

__version__ = "0.1.0"
