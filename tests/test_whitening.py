"""PCA-whitening: the projection math, fitting, and `manet models whiten` on a real database."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sqlalchemy as sa
import torch

from manet.errors import ManetError
from manet.nn.whitening import (
    Projection,
    check_fit_size,
    fit_whitening,
    whiten,
    whiten_array,
    whitening_matrix,
)


# -- the math, by hand ---------------------------------------------------------------------------
def test_whitening_matrix_scales_each_component_by_its_standard_deviation():
    # components: the two axes; variances 4 and 1 -> standard deviations 2 and 1.
    matrix = whitening_matrix(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([4.0, 1.0]))
    assert np.allclose(matrix, [[0.5, 0.0], [0.0, 1.0]])


def test_whiten_centres_projects_and_normalises():
    mean = torch.tensor([1.0, 1.0])
    matrix = torch.tensor([[0.5, 0.0], [0.0, 1.0]])
    # [3, 2] - [1, 1] = [2, 1] -> [1, 1] -> L2: [1, 1] / sqrt(2)
    out = whiten(torch.tensor([[3.0, 2.0]]), mean, matrix)
    assert torch.allclose(out, torch.tensor([[0.5 ** 0.5, 0.5 ** 0.5]]))


def test_whiten_to_fewer_dimensions():
    # One component (0.6, 0.8) with variance 4: matrix (0.3, 0.4)^T.
    projection = Projection(np.zeros(2, np.float32), np.array([[0.6, 0.8]], np.float32),
                            np.array([4.0], np.float32), fitted_rows=3)
    assert np.allclose(projection.matrix, [[0.3], [0.4]])
    # [1, 1] -> 0.7 -> +1;  [-1, 0] -> -0.3 -> -1
    out = whiten_array(np.array([[1.0, 1.0], [-1.0, 0.0]], np.float32), projection)
    assert out.shape == (2, 1) and np.allclose(out, [[1.0], [-1.0]])


def test_fit_matches_scikit_learn_pca_whiten_then_l2():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(50, 12)).astype(np.float32) * np.linspace(3, 0.5, 12, dtype=np.float32)
    queries = rng.normal(size=(5, 12)).astype(np.float32)
    projection = fit_whitening(gallery, 6)
    assert (projection.input_dim, projection.output_dim, projection.fitted_rows) == (12, 6, 50)
    expected = PCA(n_components=6, whiten=True, svd_solver="full").fit(gallery.astype(np.float64)).transform(queries)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(whiten_array(queries, projection), expected, atol=1e-5)


def test_too_few_rows_or_too_many_dims_are_errors_naming_the_numbers():
    with pytest.raises(ManetError, match=r"has 10 catalogue descriptors, too few to learn a 16-dimensional.*--dims 9"):
        check_fit_size(10, 16, 512, "base")
    with pytest.raises(ManetError, match=r"has 10 catalogue descriptors.*10-dimensional"):
        check_fit_size(10, 10, 512, "base")  # centred, 10 rows span at most 9 dimensions
    with pytest.raises(ManetError, match=r"--dims 600 is out of range for model 'base' \(512 dimensions\)"):
        check_fit_size(1000, 600, 512, "base")
    with pytest.raises(ManetError, match="no catalogue descriptors.*manet extract --model base"):
        check_fit_size(0, 8, 512, "base")
    with pytest.raises(ManetError, match="span only 1 dimensions"):
        fit_whitening(np.outer(np.arange(20), np.ones(4)).astype(np.float32), 2)


def test_a_whitened_pipeline_needs_its_projection():
    from dataclasses import replace

    from manet.nn.pipeline import PipelineConfig, build_pipeline
    from manet.plugin_manager import default_registry

    plain = PipelineConfig(backbone="resnet18", weights="none", image_size=64, pooling="mac")
    whitened = replace(plain, projection={"kind": "pca-whiten", "base": "b", "input_dim": 512, "output_dim": 8})
    registry = default_registry()
    assert whitened.validate(registry) == 8
    with pytest.raises(ManetError, match="needs its stored projection"):
        build_pipeline(whitened, registry)
    with pytest.raises(ManetError, match="invalid projection"):
        replace(whitened, projection={**whitened.projection, "input_dim": 2048}).validate(registry)


# -- through the CLI, on the generated catalogue ----------------------------------------------------
def stored(retriever, model: str) -> dict[int, np.ndarray]:
    from manet.store.database import as_array

    with retriever.db.begin() as conn:
        rows = conn.execute(sa.text("SELECT d.image_id, d.embedding FROM descriptors d JOIN models m "
                                    "ON m.id = d.model_id WHERE m.name = :n"), {"n": model}).all()
    return {row.image_id: as_array(row.embedding) for row in rows}


def model_count(retriever) -> int:
    with retriever.db.begin() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM models")).scalar()


def test_whiten_projects_every_stored_descriptor(populated, run):
    from sklearn.decomposition import PCA

    result = run("models", "whiten", "tiny", "--dims", "8", "--name", "tiny-w8", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["dim"] == 8 and record["config"]["projection"]["output_dim"] == 8
    base, whitened = stored(populated, "tiny"), stored(populated, "tiny-w8")
    assert set(whitened) == set(base) and len(base) == 30
    # An independent check: scikit-learn's own PCA(whiten=True) on the 10 catalogue descriptors.
    with populated.db.begin() as conn:
        gallery_ids = conn.execute(sa.text("SELECT id FROM images WHERE domain = 'catalog' ORDER BY id")).scalars().all()
    pca = PCA(n_components=8, whiten=True, svd_solver="full").fit(np.stack([base[i] for i in gallery_ids]).astype(np.float64))
    ids = sorted(base)
    expected = pca.transform(np.stack([base[i] for i in ids]))
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(np.stack([whitened[i] for i in ids]), expected, atol=1e-4)


def test_fresh_extraction_of_a_whitened_model_equals_projecting_the_base(populated, run, small_catalogue):
    if "tiny-w8" not in [m["name"] for m in populated.models()]:
        assert run("models", "whiten", "tiny", "--dims", "8", "--name", "tiny-w8").exit_code == 0
    projected = stored(populated, "tiny-w8")
    with populated.db.begin() as conn:  # forget some descriptors so that extract computes them again
        conn.execute(sa.text("DELETE FROM descriptors WHERE model_id = (SELECT id FROM models WHERE name = 'tiny-w8') "
                             "AND image_id IN (SELECT id FROM images ORDER BY id LIMIT 5)"))
    result = run("extract", "--model", "tiny-w8", "--json")
    assert result.exit_code == 0 and json.loads(result.output)["extracted"] == 5, result.output
    fresh = stored(populated, "tiny-w8")
    assert set(fresh) == set(projected)
    for image_id, vector in projected.items():
        assert np.allclose(fresh[image_id], vector, atol=1e-4), image_id
    # A query file is embedded through the same pipeline: base pipeline, then the projection.
    photo = small_catalogue.parent / "query" / "syn00001_0.jpg"
    assert run("index", "build", "--model", "tiny-w8").exit_code == 0
    hits = json.loads(run("search", str(photo), "--model", "tiny-w8", "-k", "3", "--json").output)
    assert len(hits) == 3
    evaluated = run("eval", "--model", "tiny-w8", "--split", "val", "--json")
    assert evaluated.exit_code == 0 and json.loads(evaluated.output)["queries"] == 20


def test_whiten_errors_are_one_line_and_create_nothing(populated, run):
    before = model_count(populated)
    for args, fragment in [
        (("--dims", "16"), "has 10 catalogue descriptors, too few to learn a 16-dimensional whitening"),
        (("--dims", "600"), "--dims 600 is out of range for model 'tiny' (512 dimensions)"),
        (("--dims", "4", "--max-rows", "4"), "--max-rows 4 must be more than --dims 4"),
    ]:
        result = run("models", "whiten", "tiny", *args, "--name", "never")
        assert result.exit_code == 1
        assert result.output.strip().count("\n") == 0 and fragment in result.output, result.output
    unknown = run("models", "whiten", "nope", "--dims", "4", "--name", "never")
    assert unknown.exit_code == 1 and "model 'nope' does not exist" in unknown.output
    assert model_count(populated) == before
    assert run("models", "whiten", "tiny", "--dims", "4", "--name", "tiny-w4").exit_code == 0
    again = run("models", "whiten", "tiny-w4", "--dims", "2", "--name", "never")
    assert again.exit_code == 1 and "already whitened; whiten its base 'tiny'" in again.output


def test_a_damaged_projection_is_one_line(populated, run):
    assert run("models", "whiten", "tiny", "--dims", "4", "--name", "tiny-damaged").exit_code == 0
    photo = _one_image(populated)
    where = "WHERE model_id = (SELECT id FROM models WHERE name = 'tiny-damaged')"
    for change in ("components = components[1:3][1:512]",  # 2 rows against 4 variances
                   "explained_variance[2] = 0", "mean[1] = 'NaN'", "components = '{}'"):
        with populated.db.begin() as conn:
            conn.execute(sa.text(f"UPDATE projections SET {change} {where}"))
        result = run("search", photo, "--model", "tiny-damaged")
        assert result.exit_code == 1 and "model 'tiny-damaged''s stored projection is damaged" in result.output, \
            (change, result.output)
        assert "manet models whiten BASE --dims D --name tiny-damaged" in result.output
        assert run("models", "delete", "tiny-damaged", "--yes").exit_code == 0
        assert run("models", "whiten", "tiny", "--dims", "4", "--name", "tiny-damaged").exit_code == 0


def test_whitened_model_survives_deleting_its_base(populated, run):
    assert run("models", "create", "base2", "--backbone", "resnet18", "--weights", "none", "--image-size", "64",
               "--pooling", "mac").exit_code == 0
    assert run("extract", "--model", "base2").exit_code == 0
    assert run("models", "whiten", "base2", "--dims", "4", "--name", "base2-w4").exit_code == 0
    assert run("models", "delete", "base2", "--yes").exit_code == 0
    with populated.db.begin() as conn:
        source = conn.execute(sa.text("SELECT p.source_model_id FROM projections p JOIN models m ON m.id = p.model_id "
                                      "WHERE m.name = 'base2-w4'")).one()
    assert source.source_model_id is None
    vectors = populated.embed("base2-w4", [_one_image(populated)])
    assert vectors.shape == (1, 4) and np.isclose(np.linalg.norm(vectors), 1.0, atol=1e-5)
    assert run("models", "delete", "base2-w4", "--yes").exit_code == 0
    with populated.db.begin() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM projections p LEFT JOIN models m ON m.id = p.model_id "
                                    "WHERE m.id IS NULL")).scalar() == 0


def _one_image(retriever) -> str:
    with retriever.db.begin() as conn:
        return conn.execute(sa.text("SELECT uri FROM images ORDER BY id LIMIT 1")).scalar()
