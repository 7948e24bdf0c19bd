"""``manet serve``: the HTTP search service (:mod:`manet.serve`)."""

from __future__ import annotations

import click

from manet import config
from manet.cli.common import State, pass_state
from manet.cli.options import MAX_LOCAL_PROCESSES, FiniteFloat


@click.command()
@click.option("--host", default=config.DEFAULT_SERVE_HOST, show_default=True, envvar=config.SERVE_HOST_ENV,
              show_envvar=True, help="Address to listen on; 0.0.0.0 (or ::) to be reachable from other machines.")
@click.option("--port", type=click.IntRange(0, 65535), default=config.DEFAULT_SERVE_PORT, show_default=True,
              envvar=config.SERVE_PORT_ENV, show_envvar=True)
@click.option("--model", "model", envvar=config.SERVE_MODEL_ENV, show_envvar=True,
              help="Model of the requests that name none, loaded at start (default: the only model, if one).")
@click.option("--workers", type=click.IntRange(1, MAX_LOCAL_PROCESSES), default=1, show_default=True,
              envvar=config.SERVE_WORKERS_ENV, show_envvar=True,
              help="Server processes, each with its own copy of the network.")
@click.option("--api-key", envvar=config.API_KEY_ENV, show_envvar=True, metavar="KEY",
              help="Require this key on /v1 and /metrics (Authorization: Bearer KEY or X-API-Key: KEY); "
                   "prefer the variable: a command line is visible to other users.")
@click.option("--max-batch", type=click.IntRange(min=1), default=config.DEFAULT_SERVE_MAX_BATCH, show_default=True,
              envvar=config.SERVE_MAX_BATCH_ENV, show_envvar=True,
              help="Concurrent queries per forward pass at most; 1 = no micro-batching.")
@click.option("--batch-wait-ms", type=FiniteFloat(min=0), default=config.DEFAULT_SERVE_BATCH_WAIT_MS,
              show_default=True, envvar=config.SERVE_BATCH_WAIT_MS_ENV, show_envvar=True,
              help="How long a query waits for others to share its forward pass.")
@click.option("--max-upload-bytes", type=click.IntRange(min=1), default=config.DEFAULT_SERVE_MAX_UPLOAD_BYTES,
              show_default=True, envvar=config.SERVE_MAX_UPLOAD_BYTES_ENV, show_envvar=True,
              help="Larger photo uploads are refused with 413 (counted while receiving).")
@pass_state
def serve(state: State, host: str, port: int, model: str | None, workers: int, api_key: str | None,
          max_batch: int, batch_wait_ms: float, max_upload_bytes: int) -> None:
    """Serve search over HTTP: POST /v1/search, the search page at /, the API docs at /docs.

    Connect it with a read-only role (manet db grant-reader) and the database URL of that role.
    Runs until stopped (Ctrl-C); /healthz, /readyz and /metrics are for the operator.
    """
    import uvicorn

    from manet.settings import export_for_workers

    options = {"model": model, "api_key": api_key, "max_batch": max_batch, "batch_wait_ms": batch_wait_ms,
               "max_upload_bytes": max_upload_bytes}
    if workers == 1:
        from manet.serve.app import create_app

        app = create_app(state.settings, **options)
        click.echo(f"serving on http://{_display(host)}:{port} (API docs at /docs); Ctrl-C stops", err=True)
        uvicorn.run(app, host=host, port=port, log_level="info", access_log=False, timeout_graceful_shutdown=10)
        return
    # uvicorn starts each worker as a new Python process that imports the app factory and inherits
    # this environment: the settings and the options go there (this process only serves them).
    # The database is reached here first, so the workers do not all start an embedded server.
    url = config.libpq_url(state.retriever.db.url)
    export_for_workers(state.settings.with_options(database_url=url), options)
    click.echo(f"serving on http://{_display(host)}:{port} with {workers} workers (API docs at /docs); "
               f"Ctrl-C stops", err=True)
    uvicorn.run("manet.serve.app:app_from_environment", factory=True, host=host, port=port, workers=workers,
                log_level="info", access_log=False, timeout_graceful_shutdown=10)


def _display(host: str) -> str:
    return f"[{host}]" if ":" in host else host
