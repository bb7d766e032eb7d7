"""outbox rows keep the intent; the dispatcher renders them

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('intent', sa.JSON(), nullable=True))
        batch_op.alter_column('raw', existing_type=sa.LargeBinary(), nullable=True)


def downgrade() -> None:
    # A row not rendered yet has no place in the old schema: refuse rather than lose it.
    waiting = op.get_bind().execute(sa.text("SELECT count(*) FROM outbox WHERE raw IS NULL"))
    if waiting.scalar_one():
        raise RuntimeError("the outbox holds mails not sent yet: run the dispatcher first")
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.alter_column('raw', existing_type=sa.LargeBinary(), nullable=False)
        batch_op.drop_column('intent')
