"""The generic ``gallery`` spider and per-site spiders built on it."""
