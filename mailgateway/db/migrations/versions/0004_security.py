"""inbox rows say whether their transport's MTA vouches for Authentication-Results;
outbox claims name their claimant

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('inbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('trusts_authentication_results', sa.Boolean(),
                                      nullable=False, server_default=sa.false()))
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claimed_by', sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_column('claimed_by')
    with op.batch_alter_table('inbox', schema=None) as batch_op:
        batch_op.drop_column('trusts_authentication_results')
