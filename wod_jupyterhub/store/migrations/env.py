"""Alembic environment: migrations run on the connection Store.upgrade hands over."""

from alembic import context

# Absolute: Alembic runs this file as a script, not as a module of the package.
from wod_jupyterhub.store.models import VERSION_TABLE, Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through wod_jupyterhub.store.models.Store.upgrade()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
