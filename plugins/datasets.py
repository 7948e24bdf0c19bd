"""Built-in dataset plugins: ``folder``, ``manifest`` and ``grocery-store``.

They only read layouts and metadata; images are not opened here (ingest validates them).
Every record's image path is absolute and resolved. Problems raise
:class:`~manet.errors.DatasetError` with one line naming the file (and 1-based line).

``records()`` checks the path before returning, so a wrong path fails at the call, while
large manifests are still read lazily, row by row.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from manet.errors import DatasetError
from manet.hookspecs import Register, hookimpl
from manet.plugin_base import DOMAINS, SPLITS, Dataset, Record
from manet.safe_files import check_regular, open_regular

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
PRODUCT_FIELDS = ("title", "brand", "description", "category")
_RECORD_FIELDS = frozenset({"image", "sku", "domain", "split", *PRODUCT_FIELDS})
_SPLIT_CHOICES = ("", *SPLITS)


# --- shared helpers ------------------------------------------------------------------------


def _require(path: Path, *, want_dir: bool, hint: str = "") -> Path:
    """Return ``path`` resolved, or raise if it is missing or the wrong kind of path."""
    if not path.exists():
        raise DatasetError(f"dataset path {path} does not exist")
    if want_dir and not path.is_dir():
        raise DatasetError(f"dataset path {path} is a file, not a folder{hint}")
    if not want_dir and path.is_dir():
        raise DatasetError(f"dataset path {path} is a folder, not a file{hint}")
    if not want_dir:  # a named pipe or device would block or never end when read
        check_regular(path, what="dataset path", error=DatasetError)
    return path.resolve()


def _open_text(path: Path, newline: str | None = None) -> io.TextIOWrapper:
    """``path`` as UTF-8 text (a BOM skipped), opened by manet's safe open: a regular file only,
    never a blocking open of a pipe or device."""
    raw = open_regular(path, what="dataset file", error=DatasetError)
    return io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8-sig", newline=newline)


def _text(value: Any, where: str, key: str) -> str | None:
    """A cell as stripped text; empty or missing is None. JSON numbers become text."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise DatasetError(f"{where}: {key} must be text, got {json.dumps(value)[:40]}")
    if "\0" in value:
        raise DatasetError(f"{where}: {key} holds a NUL byte, which the database cannot store; remove it "
                           f"(is the file binary or UTF-16?)")
    return value.strip() or None


def _choice(value: Any, where: str, key: str, allowed: tuple[str, ...]) -> str | None:
    text = _text(value, where, key)
    if text is None:
        return None
    if text.lower() not in allowed:
        raise DatasetError(f"{where}: {key} {text!r} is not one of {', '.join(allowed)}")
    return text.lower()


def record_from_row(
    row: Mapping[str, Any],
    *,
    where: str,
    base: Path,
    domain: str = "catalog",
    split: str | None = None,
    allow_outside_root: bool = False,
) -> Record:
    """Turn one manifest/sidecar row into a :class:`Record` (the one place that does it).

    ``image`` is required (relative paths resolve against ``base``; a path that leaves
    ``base`` is refused unless ``allow_outside_root``, and remote URLs always are); ``domain`` and
    ``split`` columns override the given defaults; a catalog row needs a sku; unknown
    columns go into ``attributes``. ``where`` ("file.csv:4") prefixes every error.
    """
    image = _text(row.get("image"), where, "image")
    if image is None:
        raise DatasetError(f"{where}: the image column is empty; give the image file's path")
    sku = _text(row.get("sku"), where, "sku")
    row_domain = _choice(row.get("domain"), where, "domain", DOMAINS) or domain
    row_split = _choice(row.get("split"), where, "split", SPLITS) or split
    if sku is None and row_domain == "catalog":
        raise DatasetError(
            f"{where}: catalog image {image} has no sku; give its product's sku or set domain to query"
        )
    product = {key: _text(row.get(key), where, key) for key in PRODUCT_FIELDS}
    attributes = {
        key: value
        for key, value in row.items()
        if key not in _RECORD_FIELDS and value is not None and value != ""
    }
    if "\\u0000" in json.dumps(attributes):
        raise DatasetError(f"{where}: an attribute (a column beyond {', '.join(sorted(_RECORD_FIELDS))}) holds a "
                           f"NUL character, which the database cannot store; remove it")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", image):
        raise DatasetError(
            f"{where}: {image} is a remote URL; manet does not fetch images: download them and list local paths"
        )
    location = _absolute(base / image)
    if not allow_outside_root and os.path.commonpath([location, _absolute(base)]) != str(_absolute(base)):
        raise DatasetError(
            f"{where}: {image} is outside the dataset folder {base}; move it inside, or pass "
            f"--allow-outside-root to accept paths anywhere"
        )
    return Record(
        image=location,
        sku=sku,
        domain=row_domain,
        split=row_split,
        attributes=attributes,
        **product,
    )


def _read_text(path: Path) -> str:
    try:
        with _open_text(path) as handle:
            return handle.read()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read: {exc.strerror or exc}") from exc


def _csv_header(path: Path) -> list[str]:
    """The stripped column names of a CSV file's first row ([] for an empty file)."""
    try:
        with _open_text(path, newline="") as handle:
            return [name.strip() for name in next(csv.reader(handle), [])]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path.name}:1: unreadable CSV header ({exc})") from exc


def iter_csv_rows(path: Path, required: Iterable[str] = ()) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield ``("name.csv:LINE", row)`` for each non-blank data row of a CSV file.

    The header is stripped of spaces; a missing ``required`` column, a duplicate column or a
    row with the wrong number of fields is a :class:`DatasetError` naming the line.
    """
    try:
        with _open_text(path, newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise DatasetError(f"{path.name}: the file is empty; it needs a header row")
            header = [name.strip() for name in header]
            duplicates = sorted({name for name in header if header.count(name) > 1})
            if duplicates:
                raise DatasetError(f"{path.name}:1: duplicate column {', '.join(duplicates)}")
            missing = [name for name in required if name not in header]
            if missing:
                raise DatasetError(
                    f"{path.name}:1: no {', '.join(missing)} column (columns: {', '.join(header)}); "
                    f"add it to the header row"
                )
            last_line = reader.line_num
            for fields in reader:
                line, last_line = last_line + 1, reader.line_num  # start line of this row
                if not any(field.strip() for field in fields):
                    continue
                if len(fields) != len(header):
                    raise DatasetError(
                        f"{path.name}:{line}: {len(fields)} fields but the header has {len(header)}"
                    )
                yield f"{path.name}:{line}", dict(zip(header, fields))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path.name}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    except csv.Error as exc:
        raise DatasetError(f"{path.name}: malformed CSV ({exc})") from exc


def iter_jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``("name.jsonl:LINE", object)`` for each non-blank line (one JSON object each)."""
    try:
        with _open_text(path) as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{path.name}:{number}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
                if not isinstance(obj, dict):
                    raise DatasetError(f"{where}: expected a JSON object, got {type(obj).__name__}")
                yield where, obj
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path.name}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc


def _absolute(path: Path) -> Path:
    """An absolute, normalised path that does not follow symlinks (a link stays the image's
    own name, and a looping link is reported by ingest instead of raising here)."""
    return Path(os.path.abspath(path))


def _is_image(path: Path) -> bool:
    # Hidden files are skipped: e.g. macOS "._photo.jpg" resource forks are not images.
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _images_under(folder: Path) -> list[Path]:
    """Image files anywhere under ``folder``, sorted by relative path, hidden parts skipped."""
    found = [
        path
        for path in folder.rglob("*")
        if _is_image(path)
        # Anything but a folder is kept (a pipe, a socket, a device, a dangling or looping
        # symlink), so that ingest records why it cannot be read instead of skipping it silently.
        and (path.is_symlink() or not path.is_dir())
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    ]
    return sorted(found, key=lambda path: path.relative_to(folder).as_posix())


# --- folder --------------------------------------------------------------------------------


class FolderDataset(Dataset):
    """A folder of product sub-folders, or a flat folder of images with a sidecar CSV."""

    name = "folder"
    description = "Folder of images: one sub-folder per product (sku), or flat with a sidecar CSV."
    defaults = {"domain": "catalog", "split": "", "sidecar": "", "allow_outside_root": False}
    choices = {"domain": DOMAINS, "split": _SPLIT_CHOICES}
    SIDECAR = "products.csv"

    def _sidecar(self, root: Path) -> Path | None:
        given = self.params["sidecar"]
        if not given:
            auto = root / self.SIDECAR
            return auto if auto.is_file() else None
        path = Path(given).expanduser()
        path = path if path.is_absolute() else root / path  # relative to the dataset folder
        if not os.path.lexists(path):
            raise DatasetError(f"sidecar {path} does not exist (folder param sidecar={given!r})")
        return check_regular(path, what="sidecar", error=DatasetError)

    def records(self, path: Path) -> Iterator[Record]:
        """Yield one record per image; see the class docstring for the two layouts."""
        root = _require(
            Path(path), want_dir=True, hint="; the folder dataset needs a directory "
            "(use the manifest dataset for a .csv or .jsonl file)"
        )
        sidecar = self._sidecar(root)
        if sidecar is not None and "image" in _csv_header(sidecar):
            return self._flat(root, sidecar)
        return self._per_product(root, sidecar)

    def _defaults(self) -> dict[str, Any]:
        return {"domain": self.params["domain"], "split": self.params["split"] or None,
                "allow_outside_root": self.params["allow_outside_root"]}

    def _flat(self, root: Path, sidecar: Path) -> Iterator[Record]:
        # Layout B: every sidecar row names an image, relative to the dataset folder.
        for where, row in iter_csv_rows(sidecar, required=("image",)):
            yield record_from_row(row, where=where, base=root, **self._defaults())

    def _per_product(self, root: Path, sidecar: Path | None) -> Iterator[Record]:
        # Layout A: sku = sub-folder name; the optional sidecar adds metadata by sku.
        loose = sorted(p.name for p in root.iterdir() if (p.is_symlink() or not p.is_dir()) and _is_image(p))
        if loose:
            raise DatasetError(
                f"folder {root} has images at the top level ({', '.join(loose[:3])}"
                f"{', ...' if len(loose) > 3 else ''}) but no sidecar with an image column; "
                f"put each product's images in its own sub-folder, or add {self.SIDECAR} "
                f"with columns image,sku,..."
            )
        products = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not products:
            raise DatasetError(
                f"folder {root} has no images; expected one sub-folder of images per product"
            )
        metadata = self._metadata(sidecar) if sidecar else {}
        return self._iter_per_product(products, metadata)

    def _iter_per_product(
        self, products: list[Path], metadata: dict[str, tuple[str, dict[str, str]]]
    ) -> Iterator[Record]:
        for folder in products:
            where, row = metadata.get(folder.name, (f"{folder.name}/", {}))
            for image in _images_under(folder):
                merged = {**row, "sku": folder.name, "image": str(image)}
                yield record_from_row(merged, where=where, base=folder, **self._defaults())

    @staticmethod
    def _metadata(sidecar: Path) -> dict[str, tuple[str, dict[str, str]]]:
        """sku -> (where, row) from a products sidecar (columns sku,title,brand,...)."""
        rows: dict[str, tuple[str, dict[str, str]]] = {}
        for where, row in iter_csv_rows(sidecar, required=("sku",)):
            sku = _text(row.get("sku"), where, "sku")
            if sku is None:
                raise DatasetError(f"{where}: the sku column is empty")
            if sku in rows:
                raise DatasetError(f"{where}: duplicate sku {sku!r} (first on {rows[sku][0]})")
            rows[sku] = (where, row)
        return rows


# --- manifest ------------------------------------------------------------------------------


class ManifestDataset(Dataset):
    """A CSV or JSON-lines file listing images with their sku and product metadata."""

    name = "manifest"
    description = "A .csv or .jsonl manifest: image, sku, title, brand, description, category, domain, split."
    defaults: dict[str, Any] = {"allow_outside_root": False}

    def records(self, path: Path) -> Iterator[Record]:
        """Yield one record per row; relative image paths resolve against the manifest's folder,
        which they may not leave unless ``allow_outside_root``."""
        manifest = _require(
            Path(path), want_dir=False, hint="; give the manifest's .csv or .jsonl file"
        )
        suffix = manifest.suffix.lower()
        if suffix == ".csv":
            rows: Iterator[tuple[str, Mapping[str, Any]]] = iter_csv_rows(manifest, required=("image",))
        elif suffix in {".jsonl", ".ndjson"}:
            rows = iter_jsonl_rows(manifest)
        else:
            raise DatasetError(
                f"manifest {manifest.name}: unsupported extension {suffix or '(none)'!r}; "
                f"use .csv, .jsonl or .ndjson"
            )
        allow = self.params["allow_outside_root"]
        return (record_from_row(row, where=where, base=manifest.parent, allow_outside_root=allow)
                for where, row in rows)


# --- grocery-store -------------------------------------------------------------------------


class GroceryStoreDataset(Dataset):
    """The Grocery Store Dataset (Klasson et al., WACV 2019): iconic images vs store photos.

    ``protocol=iconic``: the catalogue is the iconic image of each product; every natural
    photo (train, val, and test when ``test.txt`` exists) is a query of its product.
    ``protocol=instance``: the catalogue is the train photos plus the iconic images; the val
    (and test) photos are the queries.
    """

    name = "grocery-store"
    description = "Grocery Store Dataset: iconic catalogue images vs. natural shop photos."
    defaults = {"protocol": "iconic"}
    choices = {"protocol": ("iconic", "instance")}
    CLASSES = "classes.csv"
    LISTS = ("train", "val")  # required; test.txt is read when present

    def records(self, path: Path) -> Iterator[Record]:
        root = _require(Path(path), want_dir=True, hint=" (give the dataset's root folder)")
        for name in (self.CLASSES, *(f"{split}.txt" for split in self.LISTS)):
            if not (root / name).is_file():
                raise DatasetError(
                    f"dataset path {root} does not look like the Grocery Store dataset: no {name} "
                    f"(expected classes.csv, train.txt, val.txt, iconic-images-and-descriptions/)"
                )
        products = self._products(root)
        photos = {split: self._photos(root, split, products) for split in ("train", "val", "test")}
        return iter(self._assemble(products, photos))

    def _assemble(
        self, products: dict[int, dict[str, Any]], photos: dict[str, list[tuple[Path, int]]]
    ) -> list[Record]:
        iconic_protocol = self.params["protocol"] == "iconic"

        def record(image: Path, class_id: int, domain: str, split: str | None) -> Record:
            product = products[class_id]
            return Record(
                image=image, domain=domain, split=split, attributes=dict(product["attributes"]),
                **{key: product[key] for key in ("sku", *PRODUCT_FIELDS)},
            )

        out = [record(p["iconic"], class_id, "catalog", None) for class_id, p in products.items()]
        for split in ("train", "val", "test"):
            domain = "catalog" if split == "train" and not iconic_protocol else "query"
            out.extend(record(image, class_id, domain, split) for image, class_id in photos[split])
        return out

    def _products(self, root: Path) -> dict[int, dict[str, Any]]:
        """Class id -> product fields, from classes.csv and the per-class text files."""
        columns = ("name", "class_id", "coarse_name", "coarse_id", "iconic", "description")
        products: dict[int, dict[str, Any]] = {}
        for where, row in iter_csv_rows(root / self.CLASSES):
            if len(row) != len(columns):
                raise DatasetError(f"{where}: expected {len(columns)} columns, got {len(row)}")
            values = dict(zip(columns, (value.strip() for value in row.values())))
            class_id = _int(values["class_id"], where, "class id")
            if class_id in products:
                raise DatasetError(f"{where}: duplicate class id {class_id}")
            name = values["name"]
            description_path = _under(root, values["description"])
            information = _information(description_path.parent, name)
            description = None
            if description_path.is_file():  # a missing text only loses metadata, not images
                description = _read_text(description_path).strip() or None
            products[class_id] = {
                "sku": name,
                "title": information.get("title") or name.replace("-", " "),
                "brand": _brand(information.get("manufacturer and volume")),
                "description": description,
                "category": values["coarse_name"] or None,
                "iconic": _under(root, values["iconic"]),
                "attributes": {
                    "class_id": class_id,
                    "coarse_class_id": _int(values["coarse_id"], where, "coarse class id"),
                },
            }
        if not products:
            raise DatasetError(f"{root / self.CLASSES}: no classes listed")
        return dict(sorted(products.items()))

    @staticmethod
    def _photos(root: Path, split: str, products: dict[int, dict[str, Any]]) -> list[tuple[Path, int]]:
        """(image, class id) for each line ``path, fine_class_id, coarse_class_id`` of a list."""
        listing = root / f"{split}.txt"
        if not listing.is_file():
            return []  # only test.txt is optional; train/val were checked by records()
        photos = []
        for number, line in enumerate(_read_text(listing).splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{listing.name}:{number}"
            fields = [field.strip() for field in line.split(",")]
            if len(fields) != 3 or not fields[0]:
                raise DatasetError(f"{where}: expected 'path, fine_class_id, coarse_class_id'")
            class_id = _int(fields[1], where, "fine class id")
            coarse_id = _int(fields[2], where, "coarse class id")
            if class_id not in products:
                raise DatasetError(f"{where}: fine class id {class_id} is not in classes.csv")
            expected = products[class_id]["attributes"]["coarse_class_id"]
            if coarse_id != expected:
                raise DatasetError(
                    f"{where}: coarse class id {coarse_id} does not match classes.csv "
                    f"({expected} for {products[class_id]['sku']})"
                )
            photos.append((_under(root, fields[0]), class_id))
        return photos


def _int(value: str, where: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DatasetError(f"{where}: {what} {value!r} is not an integer") from None


def _under(root: Path, relative: str) -> Path:
    # classes.csv writes paths as "/iconic-images-...": rooted at the dataset, not the disk.
    return _absolute(root / relative.strip().lstrip("/"))


def _information(folder: Path, name: str) -> dict[str, str]:
    """``Key: value`` lines of ``<name>_Information.txt`` (lower-case keys); {} if absent."""
    path = folder / f"{name}_Information.txt"
    if not path.is_file():
        # One class ships "Cabbage-Information.txt"; accept any "<name>?Information.txt".
        candidates = sorted(folder.glob(f"{name}?Information.txt"))
        if not candidates:
            return {}
        path = candidates[0]
    fields: dict[str, str] = {}
    for line in _read_text(path).splitlines():
        key, sep, value = line.partition(":")
        if sep and not line[:1].isspace() and key.strip().lower() not in fields:
            fields[key.strip().lower()] = value.strip()
    return fields


def _brand(manufacturer_and_volume: str | None) -> str | None:
    """"BRAVO , 2l" -> "BRAVO": the manufacturer is the part before the first comma."""
    if not manufacturer_and_volume:
        return None
    return manufacturer_and_volume.split(",", 1)[0].strip() or None


@hookimpl
def register_datasets(register: Register) -> None:
    for cls in (FolderDataset, ManifestDataset, GroceryStoreDataset):
        register(cls)
