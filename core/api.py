"""``manet.Retriever``: the one façade that the CLI, notebooks and tests use."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from manet import config
from manet.api_catalogue import CatalogueChanges
from manet.api_model_upkeep import ModelUpkeep
from manet.api_training_data import TrainingData
from manet.catalog.ingest import IngestReport, ingest
from manet.errors import ManetError
from manet.evaluate.run import EvalResult, evaluate
from manet.extract.run import ExtractReport, embed_tensors, extract, read_query_images
from manet.nn.device import select_device
from manet.nn.pipeline import PipelineConfig, build_pipeline
from manet.plugin_base import CatalogueAugmenter, Reranker
from manet.plugin_manager import PluginInfo, Registry, default_registry
from manet.safe_files import ReadLimits
from manet.search.index import IndexReport, build_index
from manet.search.query import Hit, SearchResult, run_search, search_vector, stored_descriptor
from manet.settings import Settings
from manet.store.database import Database
from manet.store.models import ModelRecord, create_model, delete_model, derive_model, get_model, list_models


class Retriever(TrainingData, CatalogueChanges, ModelUpkeep):
    """Ingest a catalogue, extract descriptors, search and evaluate.

    >>> r = Retriever()                      # embedded PostgreSQL unless MANET_DATABASE_URL is set
    >>> r.ingest("manifest", "catalogue.csv")
    >>> r.create_model("r50-srmac", backbone="resnet50", weights="none", pooling="srmac")
    >>> r.extract("r50-srmac"); r.build_index("r50-srmac")
    >>> r.search("r50-srmac", image="photo.jpg", k=7)

    Its :class:`~manet.settings.Settings` (database, home, device, precision, read caps, plugins,
    EAST model) are ``settings``, else the environment's (:meth:`Settings.from_environment`,
    except the byte and time caps: ``limits``, else the defaults); ``database_url``, ``home``,
    ``device``, ``precision`` and ``limits`` given here override them.
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        home: Path | None = None,
        registry: Registry | None = None,
        device: str | None = None,
        precision: str | None = None,
        progress: bool = False,
        auto_upgrade: bool | None = None,
        limits: ReadLimits | None = None,
        settings: Settings | None = None,
    ) -> None:
        if settings is None:  # the environment's; the byte and time caps were never read from it here
            defaults = limits or ReadLimits()
            settings = Settings.from_environment(max_bytes=defaults.max_bytes, file_timeout=defaults.timeout)
        caps = {} if limits is None else {"max_bytes": limits.max_bytes, "file_timeout": limits.timeout}
        #: What this Retriever runs with (see :class:`~manet.settings.Settings`).
        self.settings = settings.with_options(database_url=database_url, home=home, device=device,
                                              precision=precision, **caps)
        self._registry = registry
        self._device: str | None = None
        self.progress = progress
        # Migrate the embedded database automatically; an external one is the operator's call.
        self._auto_upgrade = auto_upgrade if auto_upgrade is not None else self.settings.embedded
        self._db: Database | None = None
        self._pipelines: dict[str, Any] = {}

    # -- wiring ---------------------------------------------------------------------
    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = default_registry(self.settings.load_plugins)
        return self._registry

    @property
    def db(self) -> Database:
        """The database, connected and migrated on first use."""
        if self._db is None:
            db = Database(self.settings.database_url, self.settings.home)
            if self._auto_upgrade:
                db.upgrade_if_needed()
            else:
                db.require_schema()
            self._db = db
        return self._db

    @property
    def connected_url(self) -> str | None:
        """The database URL in use (password hidden), or None before the first connection."""
        from manet.store.database import redact

        return redact(self._db.url) if self._db is not None else None

    @property
    def device(self) -> str:
        """The torch device every model runs on (:func:`manet.nn.device.select_device`)."""
        if self._device is None:
            self._device = select_device(self.settings.device)
        return self._device

    @property
    def precision(self) -> str:
        """auto | fp32 | bf16 for every forward pass (:func:`manet.nn.device.use_bf16`)."""
        return self.settings.precision

    @property
    def limits(self) -> ReadLimits:
        """The caps on every image file read (ingest, extraction, search, explain, report
        thumbnails, retry): bytes, seconds and pixels."""
        return self.settings.limits

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()
            self._db = None

    def __enter__(self) -> "Retriever":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- plugins ----------------------------------------------------------------------
    def plugins(self) -> list[PluginInfo]:
        return self.registry.all()

    # -- catalogue --------------------------------------------------------------------
    def ingest(self, kind: str, path: str | Path, *, batch_size: int = config.DEFAULT_INGEST_BATCH,
               max_pixels: int | None = None, max_outage: float = config.DEFAULT_MAX_OUTAGE, say: Any = None,
               sync: bool = False, dry_run: bool = False, confirm: Any = None, **params: Any) -> IngestReport:
        """Ingest the dataset at ``path`` read by dataset plugin ``kind`` (params go to it); a
        database outage is waited out for up to ``max_outage`` seconds (``say`` hears about it).
        A re-run updates changed products and files; ``sync`` also removes what the dataset no
        longer lists (``dry_run``: only say what; see :func:`manet.catalog.ingest.ingest`)."""
        dataset = self.registry.create("dataset", kind, **params)
        return ingest(self.db, dataset, Path(path), batch_size=batch_size, max_pixels=max_pixels,
                      limits=self.limits, progress=self.progress, max_outage=max_outage, say=say,
                      sync=sync, dry_run=dry_run, confirm=confirm)

    # -- models -----------------------------------------------------------------------
    def create_model(self, name: str, **settings: Any) -> ModelRecord:
        """Store a named pipeline; settings are :class:`~manet.nn.pipeline.PipelineConfig` fields."""
        return create_model(self.db, self.registry, name, PipelineConfig.from_dict(settings))

    def derive_model(self, name: str, source: str, *, pooling: str | None = None,
                     pooling_params: dict[str, Any] | None = None, learned_saliency: bool = True,
                     text_mask: bool = True, image_size: int | None = None) -> ModelRecord:
        """A pipeline from trained model ``source``: another pooling (and its parameters) or
        input size, or branches switched off."""
        return derive_model(self.db, self.registry, name, source, pooling=pooling, pooling_params=pooling_params,
                            learned_saliency=learned_saliency, text_mask=text_mask, image_size=image_size)

    def model(self, name: str) -> ModelRecord:
        return get_model(self.db, name)

    def models(self) -> list[dict[str, Any]]:
        return list_models(self.db)

    def delete_model(self, name: str) -> bool:
        """Delete a model with its descriptors, index and evaluation runs (an alias is refused)."""
        deleted = delete_model(self.db, name)
        self._pipelines.pop(name, None)
        return deleted

    def pipeline(self, name: str) -> Any:
        """The model's descriptor pipeline on this Retriever's device (built once per model; an
        alias is looked up on every call, so a re-pointed alias gets the new model's pipeline)."""
        if name not in self._pipelines:  # cached by model name only, never by alias
            record = self.model(name)
            if record.name in self._pipelines:
                return self._pipelines[record.name]
            projection = None
            if record.config.projection is not None:  # a whitened model: its projection is stored
                from manet.nn.whitening import load_projection

                projection = load_projection(self.db, record.id, record.name)
            self._pipelines[record.name] = build_pipeline(record.config, self.registry, projection,
                                                          east_model=self.settings.east_model).to(self.device)
            return self._pipelines[record.name]
        return self._pipelines[name]

    def whiten_model(self, name: str, base: str, dims: int, *,
                     max_rows: int = config.DEFAULT_WHITEN_ROWS) -> ModelRecord:
        """Model ``name``: ``base`` followed by a PCA-whitening to ``dims`` learned on its catalogue;
        every descriptor ``base`` has is projected into it (see :func:`manet.store.models.whiten_model`)."""
        from manet.store.models import whiten_model

        return whiten_model(self.db, self.registry, name, base, dims, max_rows=max_rows)

    def augment_model(self, name: str, base: str, *, rerank: str = "dba",
                      rerank_params: dict[str, Any] | None = None) -> ModelRecord:
        """Model ``name``: ``base`` with its catalogue descriptors augmented by catalogue augmenter
        ``rerank`` (DBA), for SQL search (see :func:`manet.store.models.augment_model`)."""
        from manet.store.models import augment_model, check_catalogue_augmenter

        augmenter = check_catalogue_augmenter(self.reranker(rerank, rerank_params))
        return augment_model(self.db, self.registry, name, base, augmenter)

    def reranker(self, name: str, params: dict[str, Any] | None = None) -> Reranker | CatalogueAugmenter:
        """The plugin ``--rerank name`` names (a re-ranker or a catalogue augmenter), with validated ``params``."""
        from manet.search.reranking import rerank_plugin

        return rerank_plugin(self.registry, name, params)

    # -- extraction, index, search ----------------------------------------------------
    def extract(self, model: str, *, batch_size: int | None = None, num_workers: int | None = None,
                max_pixels: int | None = None, split: str | None = None, device_decode: str = "auto",
                compile: bool = False) -> ExtractReport:
        """Descriptors for every image lacking one for ``model`` (resumable); with ``split``
        only the catalogue and that split's queries. ``batch_size=None`` picks it (measured on
        CUDA); ``device_decode`` auto|on|off decodes JPEGs in batches on the device (auto: CUDA).
        Decode workers start as in :meth:`train`."""
        record = self.model(model)  # resolved once: an alias re-pointed meanwhile cannot mix models
        return extract(self.db, record, self.pipeline(record.name), device=self.device, batch_size=batch_size,
                       num_workers=num_workers, max_pixels=max_pixels, progress=self.progress, split=split,
                       device_decode=device_decode, compile=compile, precision=self.precision,
                       limits=self.limits)

    def work(self, model: str, *, batch_size: int = config.DEFAULT_WORKER_BATCH,
             lease_seconds: float = config.DEFAULT_LEASE_SECONDS, max_attempts: int = config.DEFAULT_MAX_ATTEMPTS,
             until_empty: bool = False, max_outage: float = config.DEFAULT_MAX_OUTAGE, say: Any = None) -> Any:
        """Run one extraction worker for ``model`` (see :mod:`manet.extract.worker`)."""
        from manet.extract.worker import run_worker

        record = self.model(model)
        return run_worker(self.db, record, self.pipeline(record.name), device=self.device,
                          batch_size=batch_size, lease_seconds=lease_seconds, max_attempts=max_attempts,
                          until_empty=until_empty, max_outage=max_outage, precision=self.precision,
                          limits=self.limits, say=say or (lambda _m: None))

    def status(self, model: str) -> dict[str, Any]:
        """Extraction progress of ``model``: done / pending / leased / failed."""
        from manet.extract.status import model_status

        return model_status(self.db, self.model(model))

    def failures(self, model: str | None = None) -> list[dict[str, Any]]:
        """Failed ingests, and failed extractions of ``model``, with their errors."""
        from manet.extract.status import failures

        return failures(self.db, self.model(model) if model else None)

    def retry_failed(self, model: str | None = None) -> dict[str, int]:
        """Requeue failed work after a fix (see :func:`manet.extract.status.retry_failed`)."""
        from manet.extract.status import retry_failed

        return retry_failed(self.db, self.model(model) if model else None, limits=self.limits)

    def build_index(self, model: str, *, m: int = config.DEFAULT_HNSW_M,
                    ef_construction: int = config.DEFAULT_EF_CONSTRUCTION, quantize: str | None = None,
                    rerank_factor: int | None = None, maintenance_work_mem: str | None = None) -> IndexReport:
        """(Re)build the model's HNSW index (see :func:`manet.search.index.build_index`)."""
        return build_index(self.db, self.model(model), m=m, ef_construction=ef_construction, quantize=quantize,
                           rerank_factor=rerank_factor, maintenance_work_mem=maintenance_work_mem,
                           progress=self.progress)

    def embed(self, model: str, paths: Sequence[str | Path]) -> np.ndarray:
        """Descriptors of image files under ``model`` (not stored); a bad file raises ImageError
        before the model is loaded."""
        record = self.model(model)
        tensors = read_query_images([Path(p) for p in paths], record.config.image_size, limits=self.limits)
        return embed_tensors(self.pipeline(record.name), tensors, self.device, precision=self.precision)

    def search(
        self,
        model: str,
        *,
        image: str | Path | None = None,
        image_id: int | None = None,
        vector: np.ndarray | None = None,
        k: int = config.DEFAULT_K,
        category: str | None = None,
        brand: str | None = None,
        ef_search: int | None = None,
        rerank: str | None = None,
        rerank_params: dict[str, Any] | None = None,
        shortlist: int = config.DEFAULT_SHORTLIST,
        path: str = "auto",
    ) -> list[Hit]:
        """Top-k catalogue images for an image file, a stored image id, or a vector.

        A filtered search goes through the filter planner (:mod:`manet.search.planner`): exact
        over the filter's images when they are few, else HNSW; ``path`` ``exact`` / ``hnsw``
        forces one. With ``rerank`` (a re-ranker plugin name), the index's top ``shortlist`` is
        re-ranked on the candidates' stored descriptors and its top k returned.
        """
        given = [x is not None for x in (image, image_id, vector)]
        if sum(given) != 1:
            raise ManetError("give exactly one of an image path, --image-id or a vector")
        reranker = None
        if rerank is not None:  # bad names and parameters fail before any work
            from manet.search.shortlist import check_query_reranker

            reranker = check_query_reranker(self.reranker(rerank, rerank_params), k, shortlist)
        record = self.model(model)  # an alias resolves once: the whole search runs on one model
        if image is not None:
            vector = self.embed(record.name, [image])[0]
        elif image_id is not None:
            vector = stored_descriptor(self.db, record, image_id)
        if reranker is None:
            return search_vector(self.db, record, vector, k=k, category=category, brand=brand,
                                 ef_search=ef_search, path=path)
        # The HNSW candidate list is at least the shortlist, so the shortlist is the index's best.
        hits = search_vector(self.db, record, vector, k=shortlist, category=category, brand=brand,
                             ef_search=ef_search or max(shortlist, 40), path=path)
        from manet.search.shortlist import rerank_hits

        return rerank_hits(self.db, record, vector, hits, reranker, k)

    def explain_search(self, model: str, *, image: str | Path | None = None, image_id: int | None = None,
                       vector: np.ndarray | None = None, k: int = config.DEFAULT_K, category: str | None = None,
                       brand: str | None = None, ef_search: int | None = None, path: str = "auto") -> SearchResult:
        """The search of :meth:`search` (no re-ranking) with the plan it ran: exact or HNSW, how many
        catalogue images matched the filter, and PostgreSQL's EXPLAIN of the statement."""
        if sum(x is not None for x in (image, image_id, vector)) != 1:
            raise ManetError("give exactly one of an image path, --image-id or a vector")
        record = self.model(model)
        if image is not None:
            vector = self.embed(record.name, [image])[0]
        elif image_id is not None:
            vector = stored_descriptor(self.db, record, image_id)
        return run_search(self.db, record, vector, k=k, category=category, brand=brand, ef_search=ef_search,
                          path=path, explain=True)

    def product(self, sku: str) -> dict[str, Any]:
        """Product ``sku`` with its categories and images (see :func:`manet.catalog.lookup.product_by_sku`)."""
        from manet.catalog.lookup import product_by_sku

        return product_by_sku(self.db, sku)

    def image_file(self, image_id: int) -> tuple[str, str | None]:
        """The stored file and content hash of image ``image_id`` (NotFoundError when unknown)."""
        from manet.catalog.lookup import image_file

        return image_file(self.db, image_id)

    def write_eval_page(self, run_id: int, path: str | Path, *, limit: int | None = None) -> Path:
        """A self-contained HTML page of stored evaluation run ``run_id`` (misses first, at most
        ``limit`` queries; default :data:`manet.evaluate.report.DEFAULT_REPORT_LIMIT`)."""
        from manet.evaluate.report import DEFAULT_REPORT_LIMIT, eval_report

        return eval_report(self.db, run_id, Path(path), limit=DEFAULT_REPORT_LIMIT if limit is None else limit,
                           limits=self.limits)

    def write_search_page(self, path: str | Path, hits: Sequence[Hit], *, model: str,
                          k: int = config.DEFAULT_K, image: str | Path | None = None,
                          image_id: int | None = None, **context: Any) -> Path:
        """A self-contained HTML page of a search's ``hits`` for ``image`` or ``image_id``
        (``context``: ``filters``, ``reranker``, shown on the page); files read under the caps."""
        from manet.evaluate.report import search_report

        return search_report(self.db, Path(path), hits, model=model, k=k,
                             image=Path(image) if image is not None else None, image_id=image_id,
                             limits=self.limits, **context)

    def evaluate(self, model: str, *, split: str | None = None, k: int = config.DEFAULT_K, normaliser: str = "min",
                 rerank: str | None = None, rerank_params: dict[str, Any] | None = None,
                 shortlist: int = config.DEFAULT_SHORTLIST) -> EvalResult:
        """Exact-ranking metrics of ``model``; with ``rerank``, each query's top ``shortlist`` is
        re-ranked by that re-ranker plugin (a catalogue augmenter, DBA, augments the gallery instead)."""
        plugin = None if rerank is None else self.reranker(rerank, rerank_params)
        return evaluate(self.db, self.model(model), split=split, k=k, normaliser=normaliser,
                        reranker=plugin if isinstance(plugin, Reranker) else None,
                        augmenter=plugin if isinstance(plugin, CatalogueAugmenter) else None,
                        shortlist=shortlist, progress=self.progress)

    def compare(self, models: Sequence[str], *, split: str | None = None, k: int = config.DEFAULT_K,
                normaliser: str = "min") -> list[EvalResult]:
        """Evaluate several pipelines on the same queries and catalogue (extracting what is missing)."""
        records = [self.model(name) for name in models]  # unknown names fail before any work
        results = []
        for record in records:
            self.extract(record.name, split=split)
            results.append(self.evaluate(record.name, split=split, k=k, normaliser=normaliser))
        return results

    def train(self, config: Any, *, resume: bool = False, restart: bool = False, say: Any = None) -> Any:
        """Train MANet (:class:`manet.train.loop.TrainConfig`) and store it as a model.

        ``restart`` first deletes an earlier run of the same name (model row and checkpoints).
        Loader workers start from a forkserver (:mod:`manet.loader_processes`) when the calling
        script keeps its work under ``if __name__ == "__main__":``, else as the platform starts them.
        """
        import shutil

        from manet.train.loop import checkpoint_dir, train

        if self.settings.home is not None and not config.checkpoint_root:
            config.checkpoint_root = str(self.settings.home / "checkpoints")
        if restart:
            self.delete_model(config.name)
            shutil.rmtree(checkpoint_dir(config), ignore_errors=True)
        return train(self.db, self.registry, config, device=self.device, settings=self.settings, resume=resume,
                     progress=self.progress, say=say or (lambda _m: None))
