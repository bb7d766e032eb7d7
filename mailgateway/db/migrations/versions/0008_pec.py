"""PEC: the envelope's facts on a message, the certified address a ticket's customer
wrote from, and where an account that writes by PEC wants its answers

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pec', sa.JSON(), nullable=True))
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pec_address', sa.String(length=320), nullable=True))
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('answer_email', sa.String(length=320), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.drop_column('answer_email')
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.drop_column('pec_address')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_column('pec')
