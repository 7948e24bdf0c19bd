"""Named descriptor pipelines stored in the ``models`` table."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from manet import config
from manet.errors import DamagedModelError, ManetError, NotFoundError, PluginError
from manet.nn.pipeline import PipelineConfig
from manet.plugin_base import CatalogueAugmenter, Reranker
from manet.plugin_manager import Registry
from manet.store import aliases, category_indexes, descriptors
from manet.store.database import Database
from manet.store.schema import MODEL_INDEX_PREFIX


def index_name_for(model_id: int) -> str:
    return f"{MODEL_INDEX_PREFIX}{int(model_id)}"


NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$")
#: The ``models`` columns a :class:`ModelRecord` is made of.
RECORD_COLUMNS = "id, name, config, dim, metrics, index_options"


@dataclass(frozen=True)
class ModelRecord:
    """A row of ``models``: a named pipeline and its descriptor dimension."""

    id: int
    name: str
    config: PipelineConfig
    dim: int
    metrics: dict[str, Any]
    #: What ``manet index build`` made (quantize, rerank, m, ef_construction); search reads it
    #: to write SQL that matches the index. Empty before the first build.
    index_options: dict[str, Any] = field(default_factory=dict)

    @property
    def vector_type(self) -> str:
        """The pgvector type its HNSW index and queries cast to (halfvec above 2,000 dims)."""
        return f"halfvec({self.dim})" if self.dim > 2000 else f"vector({self.dim})"

    @property
    def index_name(self) -> str:
        """Name of the model's HNSW index on ``descriptors``."""
        return index_name_for(self.id)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "dim": self.dim, "config": self.config.to_dict(),
                "metrics": self.metrics, "index_options": self.index_options}


def _record(row: Any) -> ModelRecord:
    try:
        config = PipelineConfig.from_dict(row.config)
    except PluginError as exc:  # the row was edited, or written by another manet
        raise DamagedModelError(f"model '{row.name}' has damaged settings in the database ({exc}); delete it "
                                f"(manet models delete {row.name}) and create it again") from exc
    # Index options that are not an object reach search as one it refuses (manet.search.index.recorded_options).
    options = row.index_options if isinstance(row.index_options, dict) else {"invalid": row.index_options}
    return ModelRecord(row.id, row.name, config, row.dim, row.metrics if isinstance(row.metrics, dict) else {}, options)


def _check_free_name(conn: sa.Connection, name: str) -> None:
    """Take the names lock and refuse ``name`` when it is an alias (models and aliases share names)."""
    aliases.lock_names(conn)
    target = aliases.alias_target(conn, name)
    if target is not None:
        raise ManetError(f"'{name}' is an alias of model '{target}'; pick another model name, or remove the "
                         f"alias first: manet models unalias {name}")


def _insert_new(db: Database, name: str, config: PipelineConfig, dim: int, metrics: dict[str, Any]) -> ModelRecord:
    """Store a pipeline under a new, valid ``name`` (an existing name is an error, never replaced)."""
    if not NAME_PATTERN.match(name):
        raise ManetError(
            f"model name {name!r} is not allowed; use letters, digits and _ . : - (max 63 characters)"
        )
    with db.begin() as conn:
        _check_free_name(conn, name)
        if conn.execute(sa.text("SELECT 1 FROM models WHERE name = :n"), {"n": name}).first():
            raise ManetError(f"model '{name}' already exists; pick another name or delete it first")
        row = conn.execute(
            sa.text(
                "INSERT INTO models (name, config, dim, checkpoint, metrics) "
                "VALUES (:n, CAST(:c AS jsonb), :d, :ck, CAST(:m AS jsonb)) "
                f"RETURNING {RECORD_COLUMNS}"
            ),
            {"n": name, "c": json.dumps(config.to_dict()), "d": dim, "ck": config.checkpoint,
             "m": json.dumps(metrics)},
        ).one()
    return _record(row)


def create_model(db: Database, registry: Registry, name: str, config: PipelineConfig) -> ModelRecord:
    """Validate ``config`` against the installed plugins and store it under ``name``."""
    return _insert_new(db, name, config, config.validate(registry), {})


def create_vector_model(db: Database, name: str, dim: int, metrics: dict[str, Any]) -> ModelRecord:
    """A model for ``dim``-dimensional descriptors made outside manet's pipelines (benchmarks,
    imported vectors): searchable and indexable; its pipeline config is only a placeholder."""
    return _insert_new(db, name, PipelineConfig(weights="none"), int(dim), metrics)


def get_model(db: Database, name: str) -> ModelRecord:
    """The model named ``name``, or the one alias ``name`` points at, read in one statement (so a
    caller that keeps the record uses one model throughout, even while the alias is re-pointed)."""
    with db.begin() as conn:
        # manet_model_id (migration 0006): a model's name first, then an alias, as manet_search does.
        row = conn.execute(
            sa.text(f"SELECT {RECORD_COLUMNS} FROM models WHERE id = manet_model_id(:n)"), {"n": name}
        ).first()
        if row is None:
            known = [r[0] for r in conn.execute(
                sa.text("SELECT name FROM models UNION ALL SELECT alias FROM model_aliases ORDER BY 1"))]
            hint = f"known: {', '.join(known)}" if known else "none exist yet"
            raise NotFoundError(
                f"model '{name}' does not exist ({hint}); create one with: manet models create NAME"
            )
    return _record(row)


def list_models(db: Database) -> list[dict[str, Any]]:
    """Models with their descriptor counts."""
    with db.begin() as conn:
        rows = conn.execute(
            sa.text(
                f"""
                SELECT m.id, m.name, m.config, m.dim, m.metrics, m.index_options,
                       {descriptors.count_subquery("m.id")} AS descriptors,
                       ARRAY(SELECT a.alias FROM model_aliases a WHERE a.model_id = m.id ORDER BY a.alias)
                           AS aliases
                  FROM models m ORDER BY m.name
                """
            )
        ).all()
    return [dict(_record(row).as_dict(), descriptors=row.descriptors, aliases=list(row.aliases)) for row in rows]


def delete_model(db: Database, name: str) -> bool:
    """Delete a model with its descriptors, index and eval runs; False if it did not exist.

    An alias's name, or a model that aliases point at, is refused (ManetError, nothing deleted).
    """
    with db.begin() as conn:
        # FOR UPDATE: an alias being pointed here meanwhile waits, then fails its foreign key.
        model_id = conn.execute(sa.text("SELECT id FROM models WHERE name = :n FOR UPDATE"), {"n": name}).scalar()
        if model_id is None:
            target = aliases.alias_target(conn, name)
            if target is not None:
                raise ManetError(f"'{name}' is an alias of model '{target}', not a model; remove the alias with: "
                                 f"manet models unalias {name} (or delete model '{target}' by its name)")
            return False
        pointing = aliases.aliases_of(conn, model_id)
        if pointing:
            raise ManetError(f"model '{name}' is what alias {', '.join(pointing)} points at; re-point the alias "
                             f"first (manet models alias {pointing[0]} OTHER_MODEL) or remove it "
                             f"(manet models unalias {pointing[0]})")
        conn.execute(sa.text(f"DROP INDEX IF EXISTS {index_name_for(model_id)}"))
        category_indexes.drop_for_model(conn, model_id)
        conn.execute(sa.text("DELETE FROM models WHERE id = :i"), {"i": model_id})
    return True


def _upsert(db: Database, name: str, config: PipelineConfig, dim: int, checkpoint: str | None,
            metrics: dict[str, Any]) -> ModelRecord:
    with db.begin() as conn:
        _check_free_name(conn, name)
        row = conn.execute(
            sa.text(
                f"""
                INSERT INTO models (name, config, dim, checkpoint, metrics)
                VALUES (:n, CAST(:c AS jsonb), :d, :ck, CAST(:m AS jsonb))
                ON CONFLICT (name) DO UPDATE SET config = EXCLUDED.config, dim = EXCLUDED.dim,
                    checkpoint = EXCLUDED.checkpoint, metrics = EXCLUDED.metrics
                RETURNING {RECORD_COLUMNS}
                """
            ),
            {"n": name, "c": json.dumps(config.to_dict()), "d": dim, "ck": checkpoint, "m": json.dumps(metrics)},
        ).one()
    return _record(row)


def save_trained_model(db: Database, registry: Registry, train_config: Any, manet_config: dict[str, Any],
                       checkpoint: str, classes: list[str], history: list[dict[str, Any]]) -> ModelRecord:
    """Create or update the ``models`` row of a training run after each epoch (its pipeline:
    :func:`trained_pipeline_config`)."""
    config = trained_pipeline_config(train_config, manet_config, checkpoint)
    dim = config.validate(registry)
    from dataclasses import asdict

    metrics = {"classes": classes, "epochs": history, "training": asdict(train_config)}
    return _upsert(db, train_config.name, config, dim, checkpoint, metrics)


def trained_pipeline_config(train_config: Any, manet_config: dict[str, Any], checkpoint: str) -> PipelineConfig:
    """The pipeline of a training run: MANet + SR-MAC with the learned saliency and the text
    mask (or the plain classifier + MAC when both branches were off in training)."""
    branches = train_config.saliency or train_config.text
    return PipelineConfig(
        backbone=train_config.backbone,
        weights=train_config.weights,
        image_size=train_config.image_size,
        pooling="srmac" if branches else "mac",
        saliency=train_config.saliency_estimator,
        manet=manet_config,
        checkpoint=checkpoint,
        learned_saliency=bool(train_config.saliency),
        text_mask=bool(train_config.text),
        text_detector=train_config.text_detector or "",
    )


def derive_model(db: Database, registry: Registry, name: str, source: str, *, pooling: str | None = None,
                 pooling_params: dict[str, Any] | None = None, learned_saliency: bool = True,
                 text_mask: bool = True, image_size: int | None = None) -> ModelRecord:
    """A new pipeline from a trained model's network: another pooling (with ``pooling_params``;
    another pooling without them starts from its defaults), branches switched off, or another
    input size (the network is fully convolutional up to the pooling)."""
    from dataclasses import replace

    base = get_model(db, source)
    if base.config.manet is None:
        raise ManetError(f"model '{source}' is not a trained MANet (it has no checkpoint); train one with "
                         f"manet train, or create a plain pipeline without --from")
    if base.config.projection is not None:
        raise ManetError(f"model '{source}' is whitened; derive from its base "
                         f"'{base.config.projection.get('base')}', then whiten the result with manet models whiten")
    new_pooling = pooling or base.config.pooling
    if pooling_params is None:
        pooling_params = dict(base.config.pooling_params) if new_pooling == base.config.pooling else {}
    config = replace(
        base.config,
        pooling=new_pooling,
        pooling_params=pooling_params,
        image_size=image_size or base.config.image_size,
        learned_saliency=base.config.learned_saliency and learned_saliency,
        text_mask=base.config.text_mask and text_mask,
    )
    return _insert_new(db, name, config, config.validate(registry), {"derived_from": base.name})


# -- derived catalogues: PCA-whitening and database-side augmentation ---------------------------
#: Descriptor rows per streamed batch when a derived model is filled from its base.
DERIVE_BATCH = 10_000


def _derive(db: Database, registry: Registry, name: str, config: PipelineConfig, metrics: dict[str, Any],
            fill: Any) -> ModelRecord:
    """Create model ``name`` and fill it with ``fill(psycopg connection, record)`` in one
    transaction; on any failure the new model is deleted again, so nothing half-made stays."""
    record = _insert_new(db, name, config, config.validate(registry), metrics)
    try:
        with db.raw() as conn:
            fill(conn, record)
    except BaseException:
        delete_model(db, name)
        raise
    return record


def _copy_projection(conn: Any, base: ModelRecord, record: ModelRecord) -> None:
    """A copy of a whitened base's projection for a model that reuses its pipeline."""
    if base.config.projection is not None:
        conn.execute(
            "INSERT INTO projections (model_id, source_model_id, input_dim, output_dim, mean, components, "
            "explained_variance, fitted_rows) SELECT %s, source_model_id, input_dim, output_dim, mean, "
            "components, explained_variance, fitted_rows FROM projections WHERE model_id = %s",
            [record.id, base.id])


def whiten_model(db: Database, registry: Registry, name: str, base_name: str, dims: int, *,
                 max_rows: int = config.DEFAULT_WHITEN_ROWS, seed: int = 0) -> ModelRecord:
    """Model ``name``: ``base_name``'s pipeline followed by a PCA-whitening to ``dims``
    dimensions (then L2), learned on up to ``max_rows`` of its catalogue descriptors.

    Every descriptor the base already has is projected into the new model (no re-extraction);
    images extracted later for ``name`` run the base pipeline and the projection on the device.
    """
    from dataclasses import replace

    import numpy as np

    from manet.nn.whitening import PCA_WHITEN, check_fit_size, fit_whitening, save_projection, whiten_array

    base = get_model(db, base_name)
    base_name = base.name  # the real model when an alias was given: what stays recorded
    if base.config.projection is not None:
        raise ManetError(f"model '{base_name}' is already whitened; whiten its base "
                         f"'{base.config.projection.get('base')}' instead")
    with db.begin() as conn:
        ids = descriptors.gallery_ids(conn, base.id)
    check_fit_size(len(ids), dims, base.dim, base_name)
    if max_rows <= dims:
        raise ManetError(f"--max-rows {max_rows} must be more than --dims {dims}; raise --max-rows")
    if len(ids) > max_rows:  # a uniform sample bounds the fit's memory on a large catalogue
        ids = np.random.default_rng(seed).choice(ids, size=max_rows, replace=False).tolist()
    with db.raw() as conn:
        vectors = descriptors.read_vectors(conn, base.id, ids)
    # Fitted in image id order, as before the reads had one home (the order sets the rounding).
    sample = np.stack([vectors[i] for i in sorted(vectors)])
    projection = fit_whitening(sample, dims, base=base_name)
    config = replace(base.config, projection={"kind": PCA_WHITEN, "base": base_name, "input_dim": base.dim,
                                              "output_dim": int(dims)})
    metrics = {"derived_from": base_name, "whitening": {"dims": int(dims), "fitted_rows": projection.fitted_rows}}

    def fill(conn: Any, record: ModelRecord) -> None:
        save_projection(conn, record.id, base.id, projection)
        with conn.cursor() as cur:
            for image_ids, gallery, vectors in descriptors.stream(conn, base.id, batch=DERIVE_BATCH):
                descriptors.copy_rows(cur, record.id, image_ids, gallery, whiten_array(vectors, projection))

    return _derive(db, registry, name, config, metrics, fill)


def check_catalogue_augmenter(plugin: Reranker | CatalogueAugmenter) -> CatalogueAugmenter:
    """``plugin`` (named by ``--rerank``) as a catalogue augmenter; a re-ranker is refused in one line."""
    if not isinstance(plugin, CatalogueAugmenter):
        raise ManetError(f"reranker '{plugin.name}' re-scores a search shortlist and does not augment a "
                         f"catalogue; use it with manet search/eval --rerank {plugin.name}, or augment with dba")
    return plugin


def augment_model(db: Database, registry: Registry, name: str, base_name: str,
                  augmenter: CatalogueAugmenter) -> ModelRecord:
    """Model ``name``: ``base_name``'s pipeline and descriptors, its catalogue augmented by
    ``augmenter`` (a catalogue augmenter plugin, e.g. ``dba``); query descriptors are copied.

    The augmentation sees the whole catalogue at once: catalogue images extracted later for
    ``name`` are not augmented, so run this again after the catalogue changes.
    """
    import time

    import numpy as np

    base = get_model(db, base_name)
    base_name = base.name  # the real model when an alias was given: what stays recorded
    with db.raw() as conn:
        batches = list(descriptors.stream(conn, base.id, gallery=True, batch=DERIVE_BATCH))
    if not batches:
        raise ManetError(f"model '{base_name}' has no catalogue descriptors to augment; "
                         f"run: manet extract --model {base_name}")
    ids = [image_id for batch in batches for image_id in batch[0]]
    started = time.perf_counter()
    augmented = augmenter.augment(np.concatenate([batch[2] for batch in batches]))
    seconds = time.perf_counter() - started
    # The key stays "reranker" (the option is --rerank), so models augmented before read the same.
    metrics = {"derived_from": base_name, "augmented": {"reranker": augmenter.name, "params": augmenter.params,
                                                        "rows": len(ids), "seconds": round(seconds, 3)}}

    def fill(conn: Any, record: ModelRecord) -> None:
        _copy_projection(conn, base, record)
        with conn.cursor() as cur:
            for start in range(0, len(ids), DERIVE_BATCH):
                end = start + DERIVE_BATCH
                descriptors.copy_rows(cur, record.id, ids[start:end], [True] * len(ids[start:end]),
                                      augmented[start:end])
            for image_ids, gallery, vectors in descriptors.stream(conn, base.id, gallery=False,
                                                                  batch=DERIVE_BATCH):
                descriptors.copy_rows(cur, record.id, image_ids, gallery, vectors)

    return _derive(db, registry, name, base.config, metrics, fill)
