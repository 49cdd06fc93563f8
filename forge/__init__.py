"""forge: the instruction-data engine (schema, catalog, build, tags, mixtures, CLI)."""

__version__ = "0.1.0"


def select(query=None, sources=None, home=None):
    """Records matching a tag query as a polars LazyFrame (pushed-down Parquet scan).

    >>> import forge
    >>> forge.select("lang == zh and category == cot").select("id", "instruction").collect()
    """
    from forge.select import select as _select

    return _select(query, sources, home)
