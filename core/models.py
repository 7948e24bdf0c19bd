"""Named descriptor pipelines stored in the ``models`` table."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from manet.db import Database
from manet.errors import ManetError, NotFoundError
from manet.pipeline import PipelineConfig
from manet.plugin_manager import Registry
from manet.schema import MODEL_INDEX_PREFIX


def index_name_for(model_id: int) -> str:
    return f"{MODEL_INDEX_PREFIX}{int(model_id)}"


NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$")


@dataclass(frozen=True)
class ModelRecord:
    """A row of ``models``: a named pipeline and its descriptor dimension."""

    id: int
    name: str
    config: PipelineConfig
    dim: int
    metrics: dict[str, Any]

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
                "metrics": self.metrics}


def _record(row: Any) -> ModelRecord:
    return ModelRecord(row.id, row.name, PipelineConfig.from_dict(dict(row.config)), row.dim,
                       dict(row.metrics or {}))


def _insert_new(db: Database, name: str, config: PipelineConfig, dim: int, metrics: dict[str, Any]) -> ModelRecord:
    """Store a pipeline under a new, valid ``name`` (an existing name is an error, never replaced)."""
    if not NAME_PATTERN.match(name):
        raise ManetError(
            f"model name {name!r} is not allowed; use letters, digits and _ . : - (max 63 characters)"
        )
    with db.begin() as conn:
        if conn.execute(sa.text("SELECT 1 FROM models WHERE name = :n"), {"n": name}).first():
            raise ManetError(f"model '{name}' already exists; pick another name or delete it first")
        row = conn.execute(
            sa.text(
                "INSERT INTO models (name, config, dim, checkpoint, metrics) "
                "VALUES (:n, CAST(:c AS jsonb), :d, :ck, CAST(:m AS jsonb)) "
                "RETURNING id, name, config, dim, metrics"
            ),
            {"n": name, "c": json.dumps(config.to_dict()), "d": dim, "ck": config.checkpoint,
             "m": json.dumps(metrics)},
        ).one()
    return _record(row)


def create_model(db: Database, registry: Registry, name: str, config: PipelineConfig) -> ModelRecord:
    """Validate ``config`` against the installed plugins and store it under ``name``."""
    return _insert_new(db, name, config, config.validate(registry), {})


def get_model(db: Database, name: str) -> ModelRecord:
    with db.begin() as conn:
        row = conn.execute(
            sa.text("SELECT id, name, config, dim, metrics FROM models WHERE name = :n"), {"n": name}
        ).first()
        if row is None:
            known = [r[0] for r in conn.execute(sa.text("SELECT name FROM models ORDER BY name"))]
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
                """
                SELECT m.id, m.name, m.config, m.dim, m.metrics,
                       (SELECT count(*) FROM descriptors d WHERE d.model_id = m.id) AS descriptors
                  FROM models m ORDER BY m.name
                """
            )
        ).all()
    return [dict(_record(row).as_dict(), descriptors=row.descriptors) for row in rows]


def delete_model(db: Database, name: str) -> bool:
    """Delete a model with its descriptors, index and eval runs; False if it did not exist."""
    with db.begin() as conn:
        model_id = conn.execute(sa.text("SELECT id FROM models WHERE name = :n"), {"n": name}).scalar()
        if model_id is None:
            return False
        conn.execute(sa.text(f"DROP INDEX IF EXISTS {index_name_for(model_id)}"))
        conn.execute(sa.text("DELETE FROM models WHERE id = :i"), {"i": model_id})
    return True


def _upsert(db: Database, name: str, config: PipelineConfig, dim: int, checkpoint: str | None,
            metrics: dict[str, Any]) -> ModelRecord:
    with db.begin() as conn:
        row = conn.execute(
            sa.text(
                """
                INSERT INTO models (name, config, dim, checkpoint, metrics)
                VALUES (:n, CAST(:c AS jsonb), :d, :ck, CAST(:m AS jsonb))
                ON CONFLICT (name) DO UPDATE SET config = EXCLUDED.config, dim = EXCLUDED.dim,
                    checkpoint = EXCLUDED.checkpoint, metrics = EXCLUDED.metrics
                RETURNING id, name, config, dim, metrics
                """
            ),
            {"n": name, "c": json.dumps(config.to_dict()), "d": dim, "ck": checkpoint, "m": json.dumps(metrics)},
        ).one()
    return _record(row)


def save_trained_model(db: Database, registry: Registry, train_config: Any, manet_config: dict[str, Any],
                       checkpoint: str, classes: list[str], history: list[dict[str, Any]]) -> ModelRecord:
    """Create or update the ``models`` row of a training run after each epoch.

    Its pipeline is MANet + SR-MAC with the learned saliency and the text mask (or the plain
    classifier + MAC when both branches were off in training).
    """
    branches = train_config.saliency or train_config.text
    config = PipelineConfig(
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
    dim = config.validate(registry)
    from dataclasses import asdict

    metrics = {"classes": classes, "epochs": history, "training": asdict(train_config)}
    return _upsert(db, train_config.name, config, dim, checkpoint, metrics)


def derive_model(db: Database, registry: Registry, name: str, source: str, *, pooling: str | None = None,
                 learned_saliency: bool = True, text_mask: bool = True,
                 image_size: int | None = None) -> ModelRecord:
    """A new pipeline from a trained model's network: another pooling, branches switched off,
    or another input size (the network is fully convolutional up to the pooling)."""
    from dataclasses import replace

    base = get_model(db, source)
    if base.config.manet is None:
        raise ManetError(f"model '{source}' is not a trained MANet (it has no checkpoint); train one with "
                         f"manet train, or create a plain pipeline without --from")
    config = replace(
        base.config,
        pooling=pooling or base.config.pooling,
        image_size=image_size or base.config.image_size,
        learned_saliency=base.config.learned_saliency and learned_saliency,
        text_mask=base.config.text_mask and text_mask,
    )
    return _insert_new(db, name, config, config.validate(registry), {"derived_from": source})
