"""manet-retrieval: cross-domain product image retrieval on PyTorch and PostgreSQL/pgvector.

Importing ``manet`` is cheap: torch, the database and the plugins load only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from manet.errors import ManetError
from manet.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["ManetError", "Retriever", "hookimpl", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from manet.api import Retriever


def __getattr__(name: str) -> Any:
    # Lazy so that `import manet` (e.g. by a plugin module) does not pull in torch or SQLAlchemy.
    if name == "Retriever":
        from manet.api import Retriever

        return Retriever
    raise AttributeError(f"module 'manet' has no attribute {name!r}")
