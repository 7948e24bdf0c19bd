"""The database schema as SQLAlchemy Core tables (used by queries and `alembic check`).

Migrations in ``manet.migrations`` create these tables with explicit SQL where SQLAlchemy
cannot express it (vector indexes, SQL functions).
"""

from __future__ import annotations

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    ARRAY,
    REAL,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

products = Table(
    "products",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("sku", Text, nullable=False, unique=True),
    Column("title", Text),
    Column("brand", Text),
    Column("description", Text),
    Column("attributes", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("products_brand_idx", "brand"),
    # A brand filter's products (manet.store.filters), compared case-insensitively.
    Index("products_lower_brand_idx", text("lower(brand)"), "id"),
)

images = Table(
    "images",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("product_id", BigInteger, ForeignKey("products.id", ondelete="SET NULL"), index=True),
    Column("uri", Text, nullable=False),
    Column("sha256", Text, unique=True),
    Column("width", Integer),
    Column("height", Integer),
    Column("domain", Text, nullable=False),
    Column("split", Text),
    Column("status", Text, nullable=False, server_default="ok"),
    Column("error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # The dataset it came from (``manifest:/data/catalogue.csv``): what ``ingest --sync`` may
    # remove (manet.catalog.sync); NULL for rows stored before revision 0008 and not re-ingested.
    Column("source", Text),
    CheckConstraint("domain IN ('catalog', 'query')", name="images_domain_check"),
    CheckConstraint("split IN ('train', 'val', 'test')", name="images_split_check"),
    CheckConstraint("status IN ('ok', 'failed')", name="images_status_check"),
    Index("images_uri_idx", "uri"),
    Index("images_source_idx", "source"),
    # A filter's catalogue images by index-only scan (manet.store.filters).
    Index("images_catalog_product_idx", "product_id", "id", postgresql_where=text("domain = 'catalog'")),
)

categories = Table(
    "categories",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("keywords", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    Column("source", Text, nullable=False, server_default="manual"),
    CheckConstraint("source IN ('tfidf', 'manual')", name="categories_source_check"),
)

product_categories = Table(
    "product_categories",
    metadata,
    Column("product_id", BigInteger, ForeignKey("products.id", ondelete="CASCADE"), nullable=False),
    Column("category_id", Integer, ForeignKey("categories.id", ondelete="CASCADE"), nullable=False, index=True),
    PrimaryKeyConstraint("product_id", "category_id"),
    Index("product_categories_category_product_idx", "category_id", "product_id"),
)

models = Table(
    "models",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("config", JSONB, nullable=False),
    Column("checkpoint", Text),
    Column("dim", Integer, nullable=False),
    Column("metrics", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("index_options", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
)

descriptors = Table(
    "descriptors",
    metadata,
    Column("model_id", Integer, ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
    Column("image_id", BigInteger, ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
    # Denormalised from images.domain so each model's HNSW index can hold the gallery only.
    Column("gallery", Boolean, nullable=False),
    # Unconstrained dimension: one table serves models of any size; indexes cast per model.
    Column("embedding", Vector(), nullable=False),
    # The image's product's categories on gallery rows, kept by triggers (revision 0009): what a
    # category's own HNSW index (manet.search.category_index) selects its rows by.
    Column("category_ids", ARRAY(Integer)),
    PrimaryKeyConstraint("model_id", "image_id"),
)

extraction_work = Table(
    "extraction_work",
    metadata,
    Column("model_id", Integer, ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
    Column("image_id", BigInteger, ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("lease_owner", Text),
    Column("lease_expires_at", DateTime(timezone=True)),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("model_id", "image_id"),
    CheckConstraint("status IN ('pending', 'leased', 'done', 'failed')", name="extraction_work_status_check"),
)

eval_runs = Table(
    "eval_runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("model_id", Integer, ForeignKey("models.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("split", Text),
    Column("k", Integer, nullable=False),
    Column("normaliser", Text, nullable=False),
    Column("queries", Integer, nullable=False),
    Column("metrics", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

eval_results = Table(
    "eval_results",
    metadata,
    Column("run_id", Integer, ForeignKey("eval_runs.id", ondelete="CASCADE"), nullable=False),
    Column("image_id", BigInteger, ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
    Column("ap_at_k", Float, nullable=False),
    Column("ap", Float, nullable=False),
    Column("hit_at_1", Boolean, nullable=False),
    Column("top_image_ids", ARRAY(BigInteger), nullable=False),
    PrimaryKeyConstraint("run_id", "image_id"),
)

training_sets = Table(
    "training_sets",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("config", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

training_images = Table(
    "training_images",
    metadata,
    Column("set_id", Integer, ForeignKey("training_sets.id", ondelete="CASCADE"), nullable=False),
    Column("image_id", BigInteger, ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
    Column("category_id", Integer, ForeignKey("categories.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("split", Text, nullable=False),
    PrimaryKeyConstraint("set_id", "image_id"),
    CheckConstraint("split IN ('train', 'val')", name="training_images_split_check"),
)

projections = Table(
    "projections",
    metadata,
    # The whitened model; its descriptors are x -> (x - mean) @ components.T / sqrt(variance) -> L2
    # applied to its base pipeline's (see manet.nn.whitening).
    Column("model_id", Integer, ForeignKey("models.id", ondelete="CASCADE"), primary_key=True),
    # The model it was learned from (kept when that model is deleted: the pipeline is copied).
    Column("source_model_id", Integer, ForeignKey("models.id", ondelete="SET NULL")),
    Column("input_dim", Integer, nullable=False),
    Column("output_dim", Integer, nullable=False),
    Column("mean", ARRAY(REAL), nullable=False),
    Column("components", ARRAY(REAL), nullable=False),
    Column("explained_variance", ARRAY(REAL), nullable=False),
    Column("fitted_rows", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

model_aliases = Table(
    "model_aliases",
    metadata,
    # A stable name (``production``) for one model; re-pointing it is one UPDATE.
    Column("alias", Text, primary_key=True),
    Column("model_id", Integer, ForeignKey("models.id", ondelete="RESTRICT"), nullable=False, index=True),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

events = Table(
    "events",
    metadata,
    # History of catalogue, model and index changes; no foreign keys, so it outlives what it names.
    Column("id", BigInteger, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("actor", Text, nullable=False, server_default=text("CURRENT_USER")),
    Column("action", Text, nullable=False),
    Column("product_id", BigInteger),
    Column("sku", Text, index=True),
    Column("image_id", BigInteger, index=True),
    Column("model_id", Integer),
    Column("details", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Index("ix_events_at", "at"),
)

#: Per-model HNSW indexes are made by `manet index build`, not by migrations.
MODEL_INDEX_PREFIX = "descriptors_hnsw_model_"


def include_object(obj, name, type_, reflected, compare_to) -> bool:
    """Alembic filter: leave the per-model vector indexes out of schema comparisons."""
    return not (type_ == "index" and name is not None and name.startswith(MODEL_INDEX_PREFIX))
