"""Dataset plugins (folder, manifest, grocery-store) on generated miniature layouts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from manet.errors import DatasetError, PluginError
from manet.plugin_base import Record
from manet.plugins.datasets import FolderDataset, GroceryStoreDataset, ManifestDataset


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (10, 20, 30)).save(path)
    return path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- folder --------------------------------------------------------------------------------


def test_folder_per_product_with_sidecar(tmp_path: Path) -> None:
    _image(tmp_path / "SKU-B" / "b2.png")
    _image(tmp_path / "SKU-B" / "nested" / "a1.JPG")
    _image(tmp_path / "SKU-A" / "x.jpeg")
    _write(tmp_path / "SKU-A" / "notes.txt", "not an image")
    _image(tmp_path / "SKU-A" / "._x.jpg")  # macOS resource fork: skipped
    _write(
        tmp_path / "products.csv",
        "sku,title,brand,description,category,colour\n"
        "SKU-A,Apple juice,BRAVO,Sweet,Juice,green\n",
    )
    records = list(FolderDataset().records(tmp_path))
    assert [(r.sku, r.image.name) for r in records] == [
        ("SKU-A", "x.jpeg"), ("SKU-B", "b2.png"), ("SKU-B", "a1.JPG")
    ]
    assert all(r.image.is_absolute() and r.domain == "catalog" and r.split is None for r in records)
    first = records[0]
    assert (first.title, first.brand, first.description, first.category) == (
        "Apple juice", "BRAVO", "Sweet", "Juice"
    )
    assert first.attributes == {"colour": "green"}
    assert records[1].title is None  # no sidecar row for SKU-B


def test_folder_params_set_domain_and_split(tmp_path: Path) -> None:
    _image(tmp_path / "p1" / "1.jpg")
    (record,) = FolderDataset(domain="query", split="val").records(tmp_path)
    assert (record.domain, record.split, record.sku) == ("query", "val", "p1")
    with pytest.raises(PluginError, match="shop"):
        FolderDataset(domain="shop")


def test_folder_flat_with_sidecar(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg")
    _image(tmp_path / "b.png")
    _write(
        tmp_path / "products.csv",
        "image,sku,title,domain,split\n"
        "a.jpg,S1,First,,train\n"
        "b.png,,,query,\n",
    )
    a, b = FolderDataset().records(tmp_path)
    assert a == Record(image=(tmp_path / "a.jpg").resolve(), sku="S1", title="First", split="train")
    assert (b.sku, b.domain, b.split, b.image) == (None, "query", None, (tmp_path / "b.png").resolve())


def test_folder_explicit_sidecar_relative_to_folder(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg")
    _write(tmp_path / "meta" / "list.csv", "image,sku\na.jpg,S1\n")
    (record,) = FolderDataset(sidecar="meta/list.csv").records(tmp_path)
    assert record.sku == "S1" and record.image == (tmp_path / "a.jpg").resolve()
    with pytest.raises(DatasetError, match=r"sidecar .*nope\.csv does not exist"):
        FolderDataset(sidecar="nope.csv").records(tmp_path)


def test_folder_flat_without_sidecar(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg")
    with pytest.raises(DatasetError, match=r"images at the top level \(a\.jpg\).*products\.csv"):
        FolderDataset().records(tmp_path)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"dataset path .*missing does not exist"):
        FolderDataset().records(tmp_path / "missing")
    file = _write(tmp_path / "list.csv", "image,sku\n")
    with pytest.raises(DatasetError, match=r"list\.csv is a file, not a folder.*manifest"):
        FolderDataset().records(file)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="has no images"):
        FolderDataset().records(empty)


def test_folder_sidecar_errors(tmp_path: Path) -> None:
    _image(tmp_path / "p1" / "1.jpg")
    sidecar = _write(tmp_path / "products.csv", "sku,title\np1,One\np1,Again\n")
    duplicate = r"products\.csv:3: duplicate sku 'p1' \(first on products\.csv:2\)"
    with pytest.raises(DatasetError, match=duplicate):
        FolderDataset().records(tmp_path)
    sidecar.write_text("sku,domain\np1,shop\n")
    with pytest.raises(DatasetError, match=r"products\.csv:2: domain 'shop' is not one of catalog, query"):
        list(FolderDataset().records(tmp_path))
    sidecar.write_text("title\nOne\n")
    with pytest.raises(DatasetError, match=r"products\.csv:1: no sku column"):
        FolderDataset().records(tmp_path)


def test_flat_sidecar_row_errors(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg")
    _write(tmp_path / "products.csv", "image,sku,split\na.jpg,S1,train\na.jpg,S2,holdout\n")
    bad_split = r"products\.csv:3: split 'holdout' is not one of train, val, test"
    with pytest.raises(DatasetError, match=bad_split):
        list(FolderDataset().records(tmp_path))


# --- manifest ------------------------------------------------------------------------------


def test_manifest_csv(tmp_path: Path) -> None:
    _write(
        tmp_path / "data" / "manifest.csv",
        "\ufeffsku, image ,title,brand,description,category,domain,split,shelf\n"
        "S1,img/a.jpg,Apple,BRAVO,\"Two\nlines\",Juice,catalog,train,3\n"
        "\n"
        ",/abs/q.jpg,,,,,Query,,\n"
        "S1,q2.jpg,,,,,query,TEST,\n",
    )
    a, q, q2 = ManifestDataset(allow_outside_root=True).records(tmp_path / "data" / "manifest.csv")
    assert a.image == (tmp_path / "data" / "img" / "a.jpg").resolve()
    assert (a.sku, a.title, a.brand, a.description, a.category) == (
        "S1", "Apple", "BRAVO", "Two\nlines", "Juice"
    )
    assert (a.domain, a.split, a.attributes) == ("catalog", "train", {"shelf": "3"})
    assert (q.image, q.sku, q.domain, q.split, q.attributes) == (Path("/abs/q.jpg"), None, "query", None, {})
    assert (q2.sku, q2.domain, q2.split) == ("S1", "query", "test")


@pytest.mark.parametrize("image", ["/abs/q.jpg", "../outside.jpg", "img/../../outside.jpg"])
def test_manifest_paths_may_not_leave_the_dataset_folder(tmp_path: Path, image: str) -> None:
    _write(tmp_path / "data" / "manifest.csv", f"sku,image\nS1,img/a.jpg\nS2,{image}\n")
    with pytest.raises(DatasetError, match=r"manifest.csv:3: .* is outside the dataset folder .*--allow-outside-root"):
        list(ManifestDataset().records(tmp_path / "data" / "manifest.csv"))
    records = list(ManifestDataset(allow_outside_root=True).records(tmp_path / "data" / "manifest.csv"))
    assert len(records) == 2


@pytest.mark.parametrize("image", ["https://example.com/a.jpg", "s3://bucket/a.jpg"])
def test_manifest_remote_urls_are_refused(tmp_path: Path, image: str) -> None:
    _write(tmp_path / "manifest.csv", f"sku,image\nS1,{image}\n")
    with pytest.raises(DatasetError, match=r"manifest.csv:2: .* is a remote URL"):
        list(ManifestDataset(allow_outside_root=True).records(tmp_path / "manifest.csv"))


def test_manifest_jsonl(tmp_path: Path) -> None:
    lines = [
        {"sku": 17, "image": "a.jpg", "title": "Milk", "colours": ["white"]},
        {"image": "q.jpg", "domain": "query", "split": "val"},
    ]
    path = _write(tmp_path / "m.ndjson", json.dumps(lines[0]) + "\n\n" + json.dumps(lines[1]) + "\n")
    a, q = ManifestDataset().records(path)
    assert (a.sku, a.title, a.domain, a.attributes) == ("17", "Milk", "catalog", {"colours": ["white"]})
    assert a.image == (tmp_path / "a.jpg").resolve()
    assert (q.sku, q.domain, q.split) == (None, "query", "val")
    assert len(list(ManifestDataset().records(path.rename(tmp_path / "m.jsonl")))) == 2


@pytest.mark.parametrize(
    "body,message",
    [
        ("sku,image,domain\nS1,a.jpg,catalog\nS2,b.jpg,catalog\nS3,c.jpg,shop\n",
         r"manifest\.csv:4: domain 'shop' is not one of catalog, query"),
        ("sku,image,split\nS1,a.jpg,holdout\n",
         r"manifest\.csv:2: split 'holdout' is not one of train, val, test"),
        ("sku,title\nS1,x\n", r"manifest\.csv:1: no image column \(columns: sku, title\)"),
        ("sku,image\nS1,a.jpg\nS2\n", r"manifest\.csv:3: 1 fields but the header has 2"),
        ("sku,image\nS1,\n", r"manifest\.csv:2: the image column is empty"),
        ("sku,image\n,a.jpg\n", r"manifest\.csv:2: catalog image a\.jpg has no sku"),
        ("sku,image,sku\nS1,a.jpg,S1\n", r"manifest\.csv:1: duplicate column sku"),
        ("", r"manifest\.csv: the file is empty"),
    ],
)
def test_manifest_csv_errors(tmp_path: Path, body: str, message: str) -> None:
    path = _write(tmp_path / "manifest.csv", body)
    with pytest.raises(DatasetError, match=message):
        list(ManifestDataset().records(path))


@pytest.mark.parametrize(
    "body,message",
    [
        ('{"sku": "S1", "image": "a.jpg"}\n{"sku": "S2", "image": \n', r"m\.jsonl:2: invalid JSON"),
        ('{"sku": "S1", "image": "a.jpg"}\n\n["a.jpg"]\n', r"m\.jsonl:3: expected a JSON object, got list"),
        ('{"sku": "S1"}\n', r"m\.jsonl:1: the image column is empty"),
        ('{"sku": "S1", "image": "a.jpg", "domain": "shop"}\n', r"m\.jsonl:1: domain 'shop' is not one of"),
        ('{"sku": {"id": 1}, "image": "a.jpg"}\n', r"m\.jsonl:1: sku must be text"),
    ],
)
def test_manifest_jsonl_errors(tmp_path: Path, body: str, message: str) -> None:
    path = _write(tmp_path / "m.jsonl", body)
    with pytest.raises(DatasetError, match=message):
        list(ManifestDataset().records(path))


def test_manifest_path_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"dataset path .*nope\.csv does not exist"):
        ManifestDataset().records(tmp_path / "nope.csv")
    with pytest.raises(DatasetError, match=r"is a folder, not a file"):
        ManifestDataset().records(tmp_path)
    text = _write(tmp_path / "list.txt", "image\n")
    with pytest.raises(DatasetError, match=r"list\.txt: unsupported extension '\.txt'; use \.csv, \.jsonl"):
        ManifestDataset().records(text)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("image,sku\nä.jpg,S1\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"latin\.csv: not UTF-8"):
        list(ManifestDataset().records(latin))


# --- grocery-store -------------------------------------------------------------------------

_CLASSES = [
    # name, class id, coarse name, coarse id, folder, information text (None: no file)
    ("Golden-Delicious", 0, "Apple", 0, "Fruit/Apple/Golden-Delicious",
     "Title: Apple Golden Delicious Class 1 \nCountry and volume: Italy, ca 180g \n"),
    ("Bravo-Apple-Juice", 1, "Juice", 1, "Packages/Juice/Bravo-Apple-Juice",
     "\ufeffTitle: Äpple Juice \nManufacturer and volume: BRAVO , 2l \nNutrition values: \n   fett: 0\n"),
    ("Cabbage", 2, "Cabbage", 2, "Vegetables/Cabbage", None),
]


def _grocery(root: Path) -> Path:
    rows = ["Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int),"
            "Iconic Image Path (str),Product Description Path (str)"]
    train, val = [], []
    for name, class_id, coarse, coarse_id, folder, info in _CLASSES:
        base = f"/iconic-images-and-descriptions/{folder}/{name}"
        _image(root / f"{base[1:]}_Iconic.jpg")
        _write(root / f"{base[1:]}_Description.txt", f"About {name}.\n")
        if info is not None:
            _write(root / f"{base[1:]}_Information.txt", info)
        rows.append(f"{name},{class_id},{coarse},{coarse_id},{base}_Iconic.jpg,{base}_Description.txt")
        for split, listing, count in (("train", train, 3), ("val", val, 1 + class_id % 2)):
            for i in range(count):
                rel = f"{split}/{folder}/{name}_{i:03d}.jpg"
                _image(root / rel)
                listing.append(f"{rel}, {class_id}, {coarse_id}")
    # The real dataset names one file "Cabbage-Information.txt".
    _write(root / "iconic-images-and-descriptions/Vegetables/Cabbage/Cabbage-Information.txt",
           "Title: Cabbage White Import Class 1 \n")
    _write(root / "classes.csv", "\n".join(rows) + "\n")
    _write(root / "train.txt", "\n".join(train) + "\n")
    _write(root / "val.txt", "\n".join(val) + "\n")
    return root


def test_grocery_iconic_protocol(tmp_path: Path) -> None:
    root = _grocery(tmp_path / "gs")
    records = list(GroceryStoreDataset().records(root))
    counts = Counter((r.domain, r.split) for r in records)
    assert counts == {("catalog", None): 3, ("query", "train"): 9, ("query", "val"): 4}
    catalog = {r.sku: r for r in records if r.domain == "catalog"}
    assert list(catalog) == ["Golden-Delicious", "Bravo-Apple-Juice", "Cabbage"]
    juice = catalog["Bravo-Apple-Juice"]
    assert (juice.title, juice.brand, juice.category, juice.description) == (
        "Äpple Juice", "BRAVO", "Juice", "About Bravo-Apple-Juice."
    )
    assert juice.attributes == {"class_id": 1, "coarse_class_id": 1}
    assert juice.image == (root / "iconic-images-and-descriptions/Packages/Juice/Bravo-Apple-Juice/"
                           "Bravo-Apple-Juice_Iconic.jpg").resolve()
    assert catalog["Golden-Delicious"].brand is None
    assert catalog["Cabbage"].title == "Cabbage White Import Class 1"
    for record in records:  # product metadata on every record, paths absolute and present
        product = catalog[record.sku]
        fields = (record.title, record.brand, record.category, record.description)
        assert fields == (product.title, product.brand, product.category, product.description)
        assert record.image.is_absolute() and record.image.is_file()
    assert Counter(r.sku for r in records if r.split == "val") == {
        "Golden-Delicious": 1, "Bravo-Apple-Juice": 2, "Cabbage": 1
    }


def test_grocery_instance_protocol_and_title_fallback(tmp_path: Path) -> None:
    root = _grocery(tmp_path / "gs")
    (root / "iconic-images-and-descriptions/Vegetables/Cabbage/Cabbage-Information.txt").unlink()
    records = list(GroceryStoreDataset(protocol="instance").records(root))
    counts = Counter((r.domain, r.split) for r in records)
    assert counts == {("catalog", None): 3, ("catalog", "train"): 9, ("query", "val"): 4}
    assert {r.title for r in records if r.sku == "Cabbage"} == {"Cabbage"}
    with pytest.raises(PluginError, match="protocol"):
        GroceryStoreDataset(protocol="other")


def test_grocery_test_list_is_read_when_present(tmp_path: Path) -> None:
    root = _grocery(tmp_path / "gs")
    _image(root / "test/x.jpg")
    _write(root / "test.txt", "test/x.jpg, 2, 2\n")
    records = list(GroceryStoreDataset(protocol="instance").records(root))
    assert [(r.sku, r.domain) for r in records if r.split == "test"] == [("Cabbage", "query")]


def test_grocery_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        GroceryStoreDataset().records(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"does not look like the Grocery Store dataset: no classes\.csv"):
        GroceryStoreDataset().records(tmp_path)
    root = _grocery(tmp_path / "gs")
    with (root / "val.txt").open("a") as handle:
        handle.write("val/x.jpg, 9, 0\n")
    with pytest.raises(DatasetError, match=r"val\.txt:5: fine class id 9 is not in classes\.csv"):
        GroceryStoreDataset().records(root)
    _write(root / "val.txt", "val/x.jpg 0 0\n")
    with pytest.raises(DatasetError, match=r"val\.txt:1: expected 'path, fine_class_id, coarse_class_id'"):
        GroceryStoreDataset().records(root)
    _write(root / "val.txt", "val/x.jpg, 0, 1\n")
    with pytest.raises(DatasetError, match=r"val\.txt:1: coarse class id 1 does not match"):
        GroceryStoreDataset().records(root)
    (root / "train.txt").unlink()
    with pytest.raises(DatasetError, match=r"no train\.txt"):
        GroceryStoreDataset().records(root)


def test_grocery_bad_classes_csv(tmp_path: Path) -> None:
    root = _grocery(tmp_path / "gs")
    lines = (root / "classes.csv").read_text().splitlines()
    lines[2] = lines[2].replace(",1,Juice", ",one,Juice")
    _write(root / "classes.csv", "\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"classes\.csv:3: class id 'one' is not an integer"):
        GroceryStoreDataset().records(root)


# --- registration --------------------------------------------------------------------------


def test_registry_has_the_datasets() -> None:
    from manet.plugin_manager import default_registry

    names = default_registry().names("dataset")
    assert {"folder", "manifest", "grocery-store"} <= set(names)
