"""forge: the instruction-data engine (schema, catalog, build, tags, mixtures, CLI)."""

# The submodule is imported first so that `forge.select` below stays the function: importing
# a submodule for the first time binds its name on the package, which would otherwise replace
# the function whenever some other module happened to import forge.select first.
from forge import select as _select_module

__version__ = "0.1.0"


def select(query=None, sources=None, home=None):
    """Records matching a tag query as a polars LazyFrame (pushed-down Parquet scan).

    >>> import forge
    >>> forge.select("lang == zh and category == cot").select("id", "instruction").collect()
    """
    return _select_module.select(query, sources, home)
