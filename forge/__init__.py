"""forge: the instruction-data engine (schema, catalog, build, tags, mixtures, CLI)."""

__version__ = "0.1.0"
