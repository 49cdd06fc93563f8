"""forge: the instruction-data engine (schema, catalog, build, tags, mixtures, CLI)."""

from pathlib import Path as _Path

# One import package. The pipeline's folders sit at the repository root (connectors/,
# formatters/, train/: the layout shows the data flow) and the wheel ships them inside this
# package (pyproject's `sources`). In a source checkout, which is what an editable install
# runs, forge.connectors, forge.formatters and forge.train are found beside this folder.
_CHECKOUT = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).parent / "train").is_dir() and (_CHECKOUT / "train" / "__init__.py").is_file():
    __path__.append(str(_CHECKOUT))

__version__ = "0.1.0"


def select(query=None, sources=None, home=None):
    """Records matching a tag query as a polars LazyFrame (pushed-down Parquet scan).

    >>> import forge
    >>> forge.select("lang == zh and category == cot").select("id", "instruction").collect()
    """
    # imported here, not at the top: every `forge` command imports this package, and most
    # never need polars (the module is named selection so that importing it never rebinds
    # this function's name on the package)
    from forge.selection import select as run

    return run(query, sources, home)
