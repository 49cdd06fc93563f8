"""forge: the instruction-data engine (schema, catalog, build, tags, mixtures, CLI)."""

from pathlib import Path as _Path

# One import package. The pipeline's folders sit at the repository root (connectors/,
# formatters/, train/: the layout shows the data flow) and the wheel ships them inside this
# package (pyproject's `sources`). In a source checkout, which is what an editable install
# runs, forge.connectors, forge.formatters and forge.train are found beside this folder.
_CHECKOUT = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).parent / "train").is_dir() and (_CHECKOUT / "train" / "__init__.py").is_file():
    __path__.append(str(_CHECKOUT))

# The submodule is imported first so that `forge.select` below stays the function: importing
# a submodule for the first time binds its name on the package, which would otherwise replace
# the function whenever some other module happened to import forge.select first.
from forge import select as _select_module  # noqa: E402

__version__ = "0.1.0"


def select(query=None, sources=None, home=None):
    """Records matching a tag query as a polars LazyFrame (pushed-down Parquet scan).

    >>> import forge
    >>> forge.select("lang == zh and category == cot").select("id", "instruction").collect()
    """
    return _select_module.select(query, sources, home)
