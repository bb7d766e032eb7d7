"""solved tickets and their full-text index: SQLite FTS5, PostgreSQL tsvector ('italian')

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import mailgateway.db.models

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'solved_tickets',
        sa.Column('ticket_id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('account_id', sa.Integer(), nullable=False),
        sa.Column('closed_at', mailgateway.db.models.UTCDateTime(timezone=True),
                  nullable=False),
        sa.Column('subject', sa.Text(), nullable=False),
        sa.Column('request', sa.Text(), nullable=False),
        sa.Column('answer', sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(['account_id'], ['accounts.id']),
        sa.ForeignKeyConstraint(['ticket_id'], ['tickets.id']),
        sa.PrimaryKeyConstraint('ticket_id'),
    )
    with op.batch_alter_table('solved_tickets', schema=None) as batch_op:
        batch_op.create_index('ix_solved_tickets_account_id', ['account_id'], unique=False)
    # A new request is compared with its account's latest open tickets (duplicates).
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.create_index('ix_tickets_account_updated', ['account_id', 'updated_at'],
                              unique=False)
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("ALTER TABLE solved_tickets ADD COLUMN search tsvector GENERATED ALWAYS AS ("
                   "setweight(to_tsvector('italian'::regconfig, subject), 'A') || "
                   "setweight(to_tsvector('italian'::regconfig, request), 'D')) STORED")
        op.execute("CREATE INDEX ix_solved_tickets_search ON solved_tickets USING gin (search)")
    else:
        # The stems are written by `solved.index_solved`: SQLite has no Italian stemmer.
        # `subject`, `words`: for a search of every account; `own_subject`, `own_words`:
        # the same stems prefixed with the account ("a17_stamp"), so that a search of one
        # account reads that account's postings only, however large the desk.
        op.execute("CREATE VIRTUAL TABLE solved_search USING fts5(subject, words, own_subject, "
                   "own_words, tokenize = \"unicode61 remove_diacritics 2 tokenchars '_'\")")
        # How many tickets hold each term: the weights of `similar.rank`.
        op.execute("CREATE VIRTUAL TABLE solved_search_terms USING fts5vocab(solved_search, "
                   "'row')")
    from mailgateway.solved import index_all_closed

    index_all_closed(op.get_bind())


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        op.execute("DROP TABLE solved_search_terms")
        op.execute("DROP TABLE solved_search")
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.drop_index('ix_tickets_account_updated')
    with op.batch_alter_table('solved_tickets', schema=None) as batch_op:
        batch_op.drop_index('ix_solved_tickets_account_id')
    op.drop_table('solved_tickets')
