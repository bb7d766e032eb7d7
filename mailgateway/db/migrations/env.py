"""Alembic environment: the connection is handed in by `mailgateway db upgrade`."""

from __future__ import annotations

from alembic import context

from mailgateway.db.models import Base, described_by_models

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    include_object=described_by_models,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
