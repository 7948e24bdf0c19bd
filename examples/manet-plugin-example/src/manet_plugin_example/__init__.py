"""An example manet plugin: the CroW pooling and the ``sku-filenames`` dataset.

manet finds this module through the entry point ``example = "manet_plugin_example"`` in the
``manet`` group (see pyproject.toml) and calls the two hooks below. Importing it is cheap:
torch is imported only when a pooling module is built, so ``manet plugins list`` stays fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from manet.errors import DatasetError, PluginError
from manet.hookspecs import Register, hookimpl
from manet.plugin_base import DOMAINS, SPLITS, Dataset, Pooling, Record
from manet.plugins.datasets import IMAGE_EXTENSIONS, record_from_row

if TYPE_CHECKING:  # pragma: no cover
    import torch

__version__ = "0.1.0"
__all__ = ["CroW", "SkuFilenameDataset", "register_datasets", "register_poolings"]


class CroW(Pooling):
    """Cross-dimensional weighted sum pooling; the math is :func:`manet_plugin_example.crow.crow`."""

    name = "crow"
    description = "CroW: sum pooling weighted by spatial activation and channel sparsity (Kalantidis 2016)."
    # The types of the defaults are the parameter types: "-p a=3" arrives as a string and becomes 3.0.
    defaults = {"a": 2.0, "b": 2.0}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)  # unknown names and wrong types are rejected here
        for key in ("a", "b"):
            if self.params[key] <= 0:
                raise PluginError(f"pooling 'crow': {key}={self.params[key]} must be > 0 (the paper uses 2)")

    def module(self) -> torch.nn.Module:
        from manet.nn.pooling import PoolingModule

        from manet_plugin_example.crow import crow

        return PoolingModule(self.name, crow, dict(self.params))


class SkuFilenameDataset(Dataset):
    """A flat folder of images named ``SKU__anything.jpg``: the sku is the part before ``separator``.

    Every image gets the ``domain`` and ``split`` parameters. A catalogue image needs a sku; a
    query image without the separator is a query of an unknown product.
    """

    name = "sku-filenames"
    description = "Flat folder of images named SKU__anything.jpg; the sku is the name's part before '__'."
    defaults = {"domain": "catalog", "split": "", "separator": "__"}
    choices = {"domain": DOMAINS, "split": ("", *SPLITS)}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if not self.params["separator"]:
            raise PluginError("dataset 'sku-filenames': separator must not be empty (default '__')")

    def records(self, path: Path) -> Iterator[Record]:
        """Records of the images directly in ``path``, by file name; hidden files are skipped."""
        root = Path(path)
        if not root.is_dir():
            state = "is a file, not a folder" if root.exists() else "does not exist"
            raise DatasetError(
                f"dataset path {root} {state}; sku-filenames reads a folder of SKU__name.jpg images"
            )
        root = root.resolve()
        images = sorted(
            p for p in root.iterdir()
            if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and not p.is_dir()
        )
        # Checked now, read lazily: a wrong path fails at the call, as with the built-in datasets.
        return (self._record(root, image) for image in images)

    def _record(self, root: Path, image: Path) -> Record:
        separator = self.params["separator"]
        sku, found, _rest = image.stem.partition(separator)
        if (not found or not sku.strip()) and self.params["domain"] == "catalog":
            raise DatasetError(
                f"{image.name}: no sku before {separator!r}; name catalogue images SKU{separator}anything"
                f"{image.suffix}, or ingest them with -o domain=query"
            )
        # The built-in row parser resolves and checks the path exactly as the folder dataset does.
        row = {"image": image.name, "sku": sku if found else ""}
        return record_from_row(row, where=image.name, base=root, domain=self.params["domain"],
                               split=self.params["split"] or None)


@hookimpl
def register_poolings(register: Register) -> None:
    register(CroW)


@hookimpl
def register_datasets(register: Register) -> None:
    register(SkuFilenameDataset)
