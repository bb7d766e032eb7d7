"""the scheduler's partial indexes: RISPOSTO tickets by answer time, unanswered by due time

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

_RISPOSTO = sa.text("status = 'RISPOSTO'")
_UNANSWERED = sa.text("answered_at IS NULL AND overdue_signalled_at IS NULL "
                      "AND status != 'CHIUSO'")


def upgrade() -> None:
    op.create_index('ix_tickets_risposto_since', 'tickets', ['answered_at'],
                    sqlite_where=_RISPOSTO, postgresql_where=_RISPOSTO)
    op.create_index('ix_tickets_unanswered_due', 'tickets', ['due_at'],
                    sqlite_where=_UNANSWERED, postgresql_where=_UNANSWERED)


def downgrade() -> None:
    op.drop_index('ix_tickets_unanswered_due', table_name='tickets')
    op.drop_index('ix_tickets_risposto_since', table_name='tickets')
