"""outbox rows record what became of a mail after the relay took it (bounced,
delivered); addresses that bounce are counted and flagged

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from mailgateway.db.models import UTCDateTime

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('bounced_at', UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('delivered_at', UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('delivery_diagnostic', sa.Text(), nullable=True))
    op.create_table(
        'bouncing_addresses',
        sa.Column('address', sa.String(length=320), nullable=False),
        sa.Column('bounces', sa.Integer(), nullable=False),
        sa.Column('first_at', UTCDateTime(), nullable=False),
        sa.Column('last_at', UTCDateTime(), nullable=False),
        sa.Column('last_diagnostic', sa.Text(), nullable=False),
        sa.Column('flagged_at', UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint('address'),
    )


def downgrade() -> None:
    op.drop_table('bouncing_addresses')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_column('delivery_diagnostic')
        batch_op.drop_column('delivered_at')
        batch_op.drop_column('bounced_at')
