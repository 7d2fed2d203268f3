"""The PostgreSQL store's statements, for one schema (tables in ``_pg_schema``).

Each store method is one statement, or runs its statements in one transaction (READ
COMMITTED). Tasks a batch changes are locked first, in id order (``lock_tasks``), and
their runs read *after* the lock is held, by a statement of its own: a statement's
snapshot is taken when it starts, so runs read by the locking statement itself could
predate the lock holder's commit. What the batch did is then written by one statement
(``write``).
Expired runs are taken with ``SKIP LOCKED``: two dispatchers reclaiming at once share
the work instead of waiting for each other.
"""

from __future__ import annotations

from cml_jobs.stores._pg_schema import channel, check_schema_name

__all__ = ["Statements"]

_LIVE = "NOT paused AND parked IS NULL AND ready_at IS NOT NULL"
_STATE = (
    "t.id, t.descriptor, t.due_at, t.paused, t.parked, t.last_run_at, t.last_outcome, "
    "t.last_error, t.counts::text AS counts, t.trace, t.note, t.ended_at, t.expires_at, "
    "(SELECT count(*) FROM {s}.runs r WHERE r.task_id = t.id) AS running"
)


class Statements:
    """Every statement of the store, with its schema filled in.

    The class attributes are templates: ``{s}`` is the quoted schema, ``{live}`` the
    condition of a task that can be claimed, ``{state}`` the columns of a ``TaskState``.
    """

    insert_task = (
        "WITH added AS (INSERT INTO {s}.tasks (id, descriptor, due_at, ready_at, trace) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING RETURNING id), "
        # the history of a task that had this id is the new task's, kept while it lives
        "kept AS (UPDATE {s}.history SET expires_at = NULL "
        "WHERE task_id IN (SELECT id FROM added) AND expires_at IS NOT NULL) "
        "SELECT id, pg_notify($6, '') FROM added"
    )
    descriptor_for_update = "SELECT descriptor, ended_at FROM {s}.tasks WHERE id = $1 FOR UPDATE"
    delete_task = "DELETE FROM {s}.tasks WHERE id = $1"
    lock_task = "SELECT 1 FROM {s}.tasks WHERE id = $1 FOR UPDATE"
    remove_task = (
        "WITH gone AS (DELETE FROM {s}.runs WHERE task_id = $1 RETURNING 1), "
        "task AS (DELETE FROM {s}.tasks WHERE id = $1), "
        "history AS (DELETE FROM {s}.history WHERE task_id = $1) SELECT count(*) FROM gone"
    )
    get = "SELECT {state} FROM {s}.tasks t WHERE t.id = $1"
    list = "SELECT {state} FROM {s}.tasks t ORDER BY t.id"
    pause = "UPDATE {s}.tasks SET paused = true WHERE id = $1 AND ended_at IS NULL RETURNING id"
    resume = (
        "WITH resumed AS (UPDATE {s}.tasks SET paused = false, due_at = $2, ready_at = $3 "
        "WHERE id = $1 AND ended_at IS NULL RETURNING id) "
        "SELECT id, pg_notify($4, '') FROM resumed"
    )
    # kind 0: a due task; 1: the ready time of the first live task not returned;
    # 2: the generation.
    poll = (
        "WITH due AS (SELECT id, due_at, ready_at, descriptor, trace FROM {s}.tasks "
        "WHERE {live} AND ready_at <= $1 ORDER BY ready_at, id LIMIT $2), "
        "following AS (SELECT ready_at FROM {s}.tasks WHERE {live} "
        "ORDER BY ready_at, id OFFSET (SELECT count(*) FROM due) LIMIT 1) "
        "SELECT 0 AS kind, id, due_at, ready_at, descriptor, trace FROM due "
        "UNION ALL SELECT 1, NULL, NULL, ready_at, NULL, NULL FROM following "
        "UNION ALL SELECT 2, value, NULL, NULL, NULL, NULL FROM {s}.meta "
        "WHERE name = 'generation'"
    )
    lock_tasks = (
        "SELECT id, due_at, ready_at, paused, parked, last_run_at, last_outcome, "
        "last_error, counts::text AS counts, ended_at, expires_at FROM {s}.tasks "
        "WHERE id = ANY($1::text[]) "
        "ORDER BY id FOR UPDATE"
    )
    runs_of = "SELECT fence, task_id FROM {s}.runs WHERE task_id = ANY($1::text[])"
    delete_runs = (
        "DELETE FROM {s}.runs WHERE fence = ANY($1::bigint[]) OR task_id = ANY($2::text[])"
    )
    # A batch's changes in one statement: runs released ($1 fences, and every run of the
    # tasks in $2), tasks deleted ($3), tasks updated ($4-$13), new runs ($14-$17, lease
    # $18) under fences drawn in their order; returns the new runs' fences.
    write = (
        "WITH released AS (DELETE FROM {s}.runs "
        "WHERE fence = ANY($1::bigint[]) OR task_id = ANY($2::text[])), "
        "gone AS (DELETE FROM {s}.tasks WHERE id = ANY($3::text[])), "
        "updated AS (UPDATE {s}.tasks t SET due_at = u.due_at, ready_at = u.ready_at, "
        "parked = u.parked, last_run_at = u.last_run_at, last_outcome = u.last_outcome, "
        "last_error = u.last_error, counts = u.counts::jsonb, ended_at = u.ended_at, "
        "expires_at = u.expires_at "
        "FROM unnest($4::text[], $5::timestamptz[], $6::timestamptz[], $7::text[], "
        "$8::timestamptz[], $9::text[], $10::text[], $11::text[], $12::timestamptz[], "
        "$13::timestamptz[]) AS u(id, due_at, ready_at, parked, last_run_at, last_outcome, "
        "last_error, counts, ended_at, expires_at) WHERE t.id = u.id), "
        "added AS (INSERT INTO {s}.runs "
        "(fence, task_id, occurrence_at, attempt, extra, lease_until) "
        "SELECT nextval('{s}.fences'), n.task_id, n.occurrence_at, n.attempt, n.extra, "
        "$18::timestamptz FROM (SELECT * FROM unnest($14::text[], $15::timestamptz[], "
        "$16::int[], $17::bool[]) "
        "WITH ORDINALITY AS n(task_id, occurrence_at, attempt, extra, ord) ORDER BY ord) AS n "
        "RETURNING fence, task_id, occurrence_at) "
        "SELECT fence, task_id, occurrence_at FROM added ORDER BY fence"
    )
    expired = (
        "SELECT r.fence, r.task_id, r.occurrence_at, r.attempt, r.extra, r.waiting, "
        "t.descriptor, t.trace, t.parked FROM {s}.runs r JOIN {s}.tasks t ON t.id = r.task_id "
        "WHERE r.lease_until <= $1 ORDER BY r.lease_until, r.fence LIMIT $2 "
        "FOR UPDATE SKIP LOCKED"
    )
    # A run given back (release) keeps its attempt, stored negative until its re-issue.
    extend = (
        "UPDATE {s}.runs r SET lease_until = $1, "
        "attempt = CASE WHEN $4::boolean THEN -abs(r.attempt) ELSE r.attempt END "
        "FROM unnest($2::bigint[], $3::text[]) AS u(fence, task_id) "
        "WHERE r.fence = u.fence AND r.task_id = u.task_id RETURNING r.fence, r.task_id"
    )
    # Extra runs waiting their turn (see reclaim) look again a second later.
    postpone = "UPDATE {s}.runs SET lease_until = $2 WHERE fence = ANY($1::bigint[])"
    going = (
        "SELECT task_id, count(*) AS running, count(waiting) AS waiting FROM {s}.runs "
        "WHERE task_id = ANY($1::text[]) GROUP BY task_id"
    )

    # -- operations (OperationsStore) ---------------------------------------------------
    # History rows ($1 task ids, $2 JSON bodies, $3 expiries, NULL while the task is
    # there); a task's every row takes the latest expiry of its new ones (its history
    # outlives it by the retention, counted from its latest row).
    keep = (
        "WITH r AS (SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[]) "
        "WITH ORDINALITY AS r(task_id, body, expires_at, ord)), "
        "e AS (SELECT task_id, max(expires_at) AS expires_at FROM r GROUP BY task_id), "
        "refreshed AS (UPDATE {s}.history h SET expires_at = e.expires_at FROM e "
        "WHERE h.task_id = e.task_id AND e.expires_at IS NOT NULL) "
        "INSERT INTO {s}.history (task_id, body, expires_at) "
        "SELECT r.task_id, r.body, e.expires_at FROM r JOIN e USING (task_id) ORDER BY r.ord"
    )
    # Trim the histories of tasks $1 to $2 rows, then forget what expired at $3: ended
    # tasks (with their history) and the histories of tasks that are gone.
    tidy = (
        "WITH ranked AS (SELECT seq, row_number() OVER (PARTITION BY task_id "
        "ORDER BY seq DESC) AS n FROM {s}.history WHERE task_id = ANY($1::text[])), "
        "trimmed AS (DELETE FROM {s}.history h USING ranked "
        "WHERE h.seq = ranked.seq AND ranked.n > $2), "
        "ended AS (DELETE FROM {s}.tasks WHERE id IN (SELECT id FROM {s}.tasks "
        "WHERE expires_at <= $3 ORDER BY id FOR UPDATE SKIP LOCKED) RETURNING id), "
        "expired AS (DELETE FROM {s}.history WHERE expires_at <= $3), "
        "with_ended AS (DELETE FROM {s}.history WHERE task_id IN (SELECT id FROM ended)) "
        "SELECT count(*) FROM ended"
    )
    history = "SELECT body FROM {s}.history WHERE task_id = $1 ORDER BY seq DESC LIMIT $2"
    share_tasks = "SELECT id FROM {s}.tasks WHERE id = ANY($1::text[]) ORDER BY id FOR KEY SHARE"
    # $1 task, $2 occurrences, $3 now, $4 max_instances, $5 channel
    add_runs = (
        "WITH t AS (SELECT id FROM {s}.tasks WHERE id = $1 AND parked IS NULL "
        "AND ended_at IS NULL FOR UPDATE), "
        "added AS (INSERT INTO {s}.runs "
        "(fence, task_id, occurrence_at, attempt, extra, waiting, lease_until) "
        "SELECT nextval('{s}.fences'), t.id, o.at, 0, true, $4, $3 FROM t, "
        "unnest($2::timestamptz[]) WITH ORDINALITY AS o(at, ord) ORDER BY o.ord) "
        "SELECT id, pg_notify($5, '') FROM t"
    )
    unpark = (
        "WITH done AS (UPDATE {s}.tasks SET parked = NULL, due_at = $2, ready_at = $3 "
        "WHERE id = $1 AND parked IS NOT NULL RETURNING id) "
        "SELECT id, pg_notify($4, '') FROM done"
    )
    update = (
        "WITH done AS (UPDATE {s}.tasks SET descriptor = $2, due_at = $3, ready_at = $4 "
        "WHERE id = $1 AND ended_at IS NULL RETURNING id) "
        "SELECT id, pg_notify($5, '') FROM done"
    )
    set_note = "UPDATE {s}.tasks SET note = $2 WHERE id = $1 RETURNING id"
    beat = (
        "INSERT INTO {s}.workers (id, body, expires_at) VALUES ($1, $2, $3) "
        "ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body, expires_at = EXCLUDED.expires_at"
    )
    leave = "DELETE FROM {s}.workers WHERE id = $1"
    workers = (
        "WITH gone AS (DELETE FROM {s}.workers WHERE expires_at <= $1) "
        "SELECT body FROM {s}.workers WHERE expires_at > $1 ORDER BY id"
    )

    def __init__(self, schema: str) -> None:
        s = f'"{check_schema_name(schema)}"'
        #: The LISTEN/NOTIFY channel of the schema.
        self.channel = channel(schema)
        parts = {"s": s, "live": _LIVE, "state": _STATE.format(s=s)}
        for name, template in vars(Statements).items():
            if isinstance(template, str) and not name.startswith("_"):
                setattr(self, name, template.format(**parts))
