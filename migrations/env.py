"""Alembic environment. The URL comes from, in order: a connection handed over by manet
(``config.attributes["connection"]``), ``sqlalchemy.url`` in the config, MANET_DATABASE_URL,
or the embedded PostgreSQL."""

from __future__ import annotations

import logging.config

from alembic import context
from sqlalchemy import create_engine, pool

from manet.store.schema import include_object, metadata

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from manet.store.database import resolve_url

    return resolve_url()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=metadata, include_object=include_object, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, include_object=include_object)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
