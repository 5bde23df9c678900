"""Durable job queue and outbound queue in one SQLite file (``<storage>/queue.sqlite3``), safe across processes.

SQLite runs in WAL mode with ``synchronous=FULL``: a method returns only after its transaction is on disk. Every
state change is one transaction, so a crash leaves each job and each outbound item in exactly one state.

Job states: ``pending`` -> ``running`` (claimed by a worker) -> ``done`` | ``error`` | ``dropped``.
At startup ``requeue_interrupted`` moves ``running`` back to ``pending`` (the node died mid-job). When one worker
process dies, ``requeue_worker`` moves its ``running`` jobs back to ``pending`` and counts the death against each
job; a job whose workers died ``max_deaths`` times ends in ``error`` (a poison object cannot crash-loop the pool).
Retention (``dicom_node.retention``) records deleted files in ``purged`` and prunes settled rows.

Outbound item states (one row per result file and destination): ``pending`` -> ``sending`` -> ``sent``; a transient
failure goes back to ``pending`` with ``attempts + 1`` and a later ``next_attempt_at``; a permanent failure or too many
attempts -> ``dead`` (the dead letter queue, resubmitted by an admin with ``resubmit_dead``). At startup
``requeue_sending`` moves ``sending`` back to ``pending``. An item for the same (destination, SOP Instance UID) as a
``pending`` or ``dead`` row replaces that row (a re-run of a job produces results with the same deterministic UIDs);
a row being sent at that moment is left alone and the new one is queued beside it.

Connections are per thread and per process (a forked worker opens its own); ``busy_timeout`` absorbs lock waits.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nodecore.received import ReceivedObject

JobStatus = Literal["pending", "running", "done", "error", "dropped"]
FinalJobStatus = Literal["done", "error", "dropped"]
OutboundStatus = Literal["pending", "sending", "sent", "dead"]
OUTBOUND_KINDS = ("sr", "sc", "gsps", "plain_sr", "original")
OUTBOUND_STATES: tuple[OutboundStatus, ...] = ("pending", "sending", "sent", "dead")
BUSY_TIMEOUT_MS = 30_000
PURGED_OBJECT = 1  # ``jobs.purged`` bits: retention deleted the received object / the result files
PURGED_RESULTS = 2
# columns added after the first release: (name, definition) added to an older database when it is opened
_ADDED_JOB_COLUMNS = (
    ("worker_deaths", "INTEGER NOT NULL DEFAULT 0"),
    ("purged", "INTEGER NOT NULL DEFAULT 0"),
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'error', 'dropped')),
    path TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL DEFAULT '',
    received_at REAL NOT NULL,
    claimed_at REAL,
    worker TEXT NOT NULL DEFAULT '',
    finished_at REAL,
    error TEXT NOT NULL DEFAULT '',
    summary TEXT NOT NULL DEFAULT '{}',
    runs INTEGER NOT NULL DEFAULT 0,
    worker_deaths INTEGER NOT NULL DEFAULT 0,
    purged INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, id);
CREATE INDEX IF NOT EXISTS jobs_path ON jobs (path);
CREATE TABLE IF NOT EXISTS outbound (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER,
    destination TEXT NOT NULL,
    path TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'sending', 'sent', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    next_attempt_at REAL NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbound_due ON outbound (destination, status, next_attempt_at, id);
CREATE INDEX IF NOT EXISTS outbound_uid ON outbound (destination, sop_instance_uid, status);
CREATE INDEX IF NOT EXISTS outbound_path ON outbound (path, status);
CREATE INDEX IF NOT EXISTS outbound_job ON outbound (job_id, status);
"""


class JobStateError(RuntimeError):
    """A job or outbound item is not in the state the operation needs (or does not exist)."""


@dataclass(frozen=True)
class OutboundItem:
    """A result file to send to one destination. ``kind``: sr | sc | gsps | plain_sr | original."""

    destination: str
    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in OUTBOUND_KINDS:
            raise ValueError(f"unknown outbound kind {self.kind!r}; expected one of {', '.join(OUTBOUND_KINDS)}")
        if not self.destination:
            raise ValueError("outbound item without a destination")


@dataclass(frozen=True)
class OutboundRow:
    """An outbound queue row. ``next_attempt_at``: POSIX seconds; ``attempts``: failed attempts so far."""

    id: int
    destination: str
    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    kind: str
    attempts: int
    last_error: str
    status: OutboundStatus
    next_attempt_at: float
    job_id: int | None


@dataclass(frozen=True)
class JobRow:
    """A job as `dicom-node status` shows it (no PHI: UIDs, AE title, times in POSIX seconds)."""

    id: int
    status: JobStatus
    sop_class_uid: str
    sop_instance_uid: str
    calling_ae: str
    received_at: float
    finished_at: float | None
    error: str
    summary: dict[str, Any]


@dataclass(frozen=True)
class WorkerRequeue:
    """What ``requeue_worker`` did: job ids put back to pending, and job ids ended in error."""

    requeued: tuple[int, ...]
    failed: tuple[int, ...]


@dataclass(frozen=True)
class JobTiming:
    """A job's times for metrics: ``claimed_at``/``finished_at`` POSIX seconds (None when not reached)."""

    id: int
    status: JobStatus
    claimed_at: float | None
    finished_at: float | None
    summary: dict[str, Any]


@dataclass(frozen=True)
class RetentionCandidate:
    """A settled job (finished, every outbound item sent) as retention sees it."""

    id: int
    status: FinalJobStatus
    path: Path
    finished_at: float
    purged: int


class JobQueue:
    """Jobs (one per received object) and the per-destination outbound queue, in ``db_path``."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")
        with self._tx(conn):
            for statement in _statements(_SCHEMA):
                conn.execute(statement)
            have = {row["name"] for row in conn.execute("PRAGMA table_info(jobs)")}
            for name, definition in _ADDED_JOB_COLUMNS:
                if name not in have:
                    conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {definition}")

    # -- connections ---------------------------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            return conn
        conn = sqlite3.connect(str(self.db_path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @staticmethod
    @contextmanager
    def _tx(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            conn.close()
        self._local.conn = None

    # -- jobs ----------------------------------------------------------------------------------------------------

    def add_job(self, obj: ReceivedObject) -> int:
        """Queue a pending job for a spooled object; committed (on disk) before returning its id."""
        cur = self._conn().execute(
            "INSERT INTO jobs (status, path, sop_instance_uid, sop_class_uid, transfer_syntax_uid, calling_ae,"
            " study_instance_uid, received_at) VALUES ('pending', ?, ?, ?, ?, ?, ?, ?)",
            (
                str(obj.path),
                obj.sop_instance_uid,
                obj.sop_class_uid,
                obj.transfer_syntax_uid,
                obj.calling_ae,
                obj.study_instance_uid,
                obj.received_at or time.time(),
            ),
        )
        return int(cur.lastrowid or 0)

    def claim_job(self, worker: str) -> ReceivedObject | None:
        """Atomically move the oldest pending job to running and return it (``job_id`` set), or None."""
        rows = (
            self._conn()
            .execute(
                "UPDATE jobs SET status='running', worker=?, claimed_at=?, runs=runs+1 WHERE id ="
                " (SELECT id FROM jobs WHERE status='pending' ORDER BY id LIMIT 1) RETURNING *",
                (worker, time.time()),
            )
            .fetchall()  # fetchall: a RETURNING statement commits only once it has run to completion
        )
        if not rows:
            return None
        row = rows[0]
        return ReceivedObject(
            path=Path(row["path"]),
            sop_instance_uid=row["sop_instance_uid"],
            sop_class_uid=row["sop_class_uid"],
            transfer_syntax_uid=row["transfer_syntax_uid"],
            calling_ae=row["calling_ae"],
            study_instance_uid=row["study_instance_uid"],
            received_at=row["received_at"],
            job_id=int(row["id"]),
        )

    def requeue_interrupted(self) -> int:
        """At startup: running -> pending (their worker died). Returns how many."""
        cur = self._conn().execute("UPDATE jobs SET status='pending', worker='' WHERE status='running'")
        return cur.rowcount

    def requeue_worker(self, worker: str, max_deaths: int = 2, reason: str = "") -> WorkerRequeue:
        """One worker process died: its ``running`` jobs go back to ``pending`` with ``worker_deaths + 1``; a job
        that reaches ``max_deaths`` ends in ``error`` instead ("worker died N times while processing this job").

        ``worker``: the name the worker claimed with (``claim_job``); ``reason``: how it died, for the error text
        (e.g. "killed by signal 9"). One transaction. Returns the requeued and the failed job ids.
        """
        if max_deaths < 1:
            raise ValueError(f"max_deaths must be >= 1, not {max_deaths}")
        requeued: list[int] = []
        failed: list[int] = []
        now = time.time()
        conn = self._conn()
        with self._tx(conn):
            rows = conn.execute(
                "SELECT id, worker_deaths FROM jobs WHERE status='running' AND worker=? ORDER BY id", (worker,)
            ).fetchall()
            for row in rows:
                deaths = int(row["worker_deaths"]) + 1
                if deaths >= max_deaths:
                    how = f" (the last time: {reason})" if reason else ""
                    conn.execute(
                        "UPDATE jobs SET status='error', worker_deaths=?, finished_at=?, error=? WHERE id=?",
                        (deaths, now,
                         f"worker died {deaths} times while processing this job{how}; not run again", row["id"]),
                    )
                    failed.append(int(row["id"]))
                else:
                    conn.execute(
                        "UPDATE jobs SET status='pending', worker='', worker_deaths=? WHERE id=?", (deaths, row["id"])
                    )
                    requeued.append(int(row["id"]))
        return WorkerRequeue(tuple(requeued), tuple(failed))

    def requeue_job(self, job_id: int, error: str, max_runs: int = 1000) -> bool:
        """A running job met a transient failure (e.g. no inference server answers): back to ``pending`` with
        ``error`` recorded, to run again. After ``max_runs`` runs it ends in ``error`` instead; returns whether it
        was requeued. Raises JobStateError when the job is not running."""
        now = time.time()
        conn = self._conn()
        with self._tx(conn):
            row = conn.execute("SELECT status, runs FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None or row["status"] != "running":
                state = f"is {row['status']}" if row else "does not exist"
                raise JobStateError(f"cannot requeue job {job_id}: it {state} (expected running)")
            if int(row["runs"]) >= max_runs:
                conn.execute("UPDATE jobs SET status='error', error=?, finished_at=? WHERE id=?",
                             (f"{error} (gave up after {row['runs']} runs)", now, job_id))  # fmt: skip
                return False
            conn.execute("UPDATE jobs SET status='pending', worker='', error=? WHERE id=?", (error, job_id))
        return True

    def finish_job(
        self,
        job_id: int,
        *,
        status: FinalJobStatus,
        error: str = "",
        summary: dict[str, Any] | None = None,
        outbound: Iterable[OutboundItem] = (),
    ) -> None:
        """End a running job and queue its outbound items in ONE transaction.

        Raises JobStateError when the job does not exist or is not running, ValueError for a bad status.
        """
        if status not in ("done", "error", "dropped"):
            raise ValueError(f"finish_job status must be done, error or dropped, not {status!r}")
        items = list(outbound)
        summary_json = json.dumps(summary or {}, default=str, sort_keys=True)
        now = time.time()
        conn = self._conn()
        with self._tx(conn):
            cur = conn.execute(
                "UPDATE jobs SET status=?, error=?, summary=?, finished_at=? WHERE id=? AND status='running'",
                (status, error, summary_json, now, job_id),
            )
            if cur.rowcount != 1:
                found = conn.execute("SELECT status FROM jobs WHERE id=?", (job_id,)).fetchone()
                state = f"is {found['status']}" if found else "does not exist"
                raise JobStateError(f"cannot finish job {job_id}: it {state} (expected running)")
            for item in items:
                conn.execute(
                    "DELETE FROM outbound WHERE destination=? AND sop_instance_uid=? AND status IN ('pending', 'dead')",
                    (item.destination, item.sop_instance_uid),
                )
                conn.execute(
                    "INSERT INTO outbound (job_id, destination, path, sop_instance_uid, sop_class_uid, kind, status,"
                    " next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
                    (job_id, item.destination, str(item.path), item.sop_instance_uid, item.sop_class_uid, item.kind,
                     now, now, now),
                )

    def get_job(self, job_id: int) -> JobRow | None:
        row = self._conn().execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return _job_row(row) if row else None

    def recent_jobs(self, limit: int = 50) -> list[JobRow]:
        """The newest ``limit`` jobs, newest first."""
        rows = self._conn().execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (int(limit),)).fetchall()
        return [_job_row(r) for r in rows]

    def job_counts(self) -> dict[str, int]:
        """Number of jobs per status (every status present, zeros included)."""
        counts = dict.fromkeys(("pending", "running", "done", "error", "dropped"), 0)
        for row in self._conn().execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status"):
            counts[row["status"]] = int(row["n"])
        return counts

    def job_timings(self, min_id: int = 0, ids: Iterable[int] | None = None) -> list[JobTiming]:
        """Jobs with ``id >= min_id``, or the jobs ``ids`` (those that still exist), oldest first (for the metrics
        scanner: no PHI is read)."""
        sql = "SELECT id, status, claimed_at, finished_at, summary FROM jobs"
        if ids is None:
            rows = self._conn().execute(f"{sql} WHERE id>=? ORDER BY id", (int(min_id),)).fetchall()
        else:
            wanted = sorted(int(i) for i in ids)
            rows = []
            for k in range(0, len(wanted), 500):
                chunk = wanted[k:k + 500]
                rows += self._conn().execute(f"{sql} WHERE id IN ({','.join('?' * len(chunk))}) ORDER BY id",
                                             chunk).fetchall()
        out = []
        for r in rows:
            try:
                summary = json.loads(r["summary"] or "{}")
            except ValueError:
                summary = {}
            out.append(JobTiming(int(r["id"]), r["status"], r["claimed_at"], r["finished_at"],
                                 summary if isinstance(summary, dict) else {}))
        return out

    def open_job_ids(self) -> list[int]:
        """Ids of the jobs not ended yet (pending or running)."""
        rows = self._conn().execute("SELECT id FROM jobs WHERE status IN ('pending', 'running')").fetchall()
        return [int(r["id"]) for r in rows]

    def max_job_id(self) -> int:
        row = self._conn().execute("SELECT MAX(id) AS m FROM jobs").fetchone()
        return int(row["m"] or 0)

    # -- retention -----------------------------------------------------------------------------------------------

    _SETTLED = (
        "status IN ('done', 'error', 'dropped') AND finished_at IS NOT NULL AND NOT EXISTS"
        " (SELECT 1 FROM outbound o WHERE o.job_id = jobs.id AND o.status != 'sent')"
    )

    def retention_candidates(
        self, statuses: Iterable[str], finished_before: float, not_purged: int, limit: int = 1000
    ) -> list[RetentionCandidate]:
        """Settled jobs (final status in ``statuses``, every outbound item ``sent``) finished before
        ``finished_before`` (POSIX s) whose ``purged`` lacks the bit ``not_purged``; oldest first."""
        wanted = [s for s in statuses if s in ("done", "error", "dropped")]
        if not wanted:
            return []
        rows = self._conn().execute(
            f"SELECT id, status, path, finished_at, purged FROM jobs WHERE {self._SETTLED}"
            f" AND status IN ({','.join('?' * len(wanted))}) AND finished_at < ? AND (purged & ?) = 0"
            " ORDER BY id LIMIT ?",
            (*wanted, finished_before, int(not_purged), int(limit)),
        ).fetchall()
        return [RetentionCandidate(int(r["id"]), r["status"], Path(r["path"]), float(r["finished_at"]),
                                   int(r["purged"])) for r in rows]

    def path_holders(self, path: Path) -> list[tuple[str, float | None, bool]]:
        """Every job whose received object is ``path``: (status, finished_at, settled)."""
        rows = self._conn().execute(
            f"SELECT status, finished_at, ({self._SETTLED}) AS settled FROM jobs WHERE path=?", (str(path),)
        ).fetchall()
        return [(r["status"], r["finished_at"], bool(r["settled"])) for r in rows]

    def unsent_outbound_for_path(self, path: Path) -> int:
        """Outbound items for the file ``path`` that are not ``sent`` (pending, sending or dead)."""
        row = self._conn().execute(
            "SELECT COUNT(*) AS n FROM outbound WHERE path=? AND status != 'sent'", (str(path),)
        ).fetchone()
        return int(row["n"])

    def unsent_outbound_under(self, directory: Path) -> int:
        """Outbound items for files under ``directory`` that are not ``sent``."""
        prefix = str(directory).rstrip("/") + "/"
        row = self._conn().execute(
            "SELECT COUNT(*) AS n FROM outbound WHERE substr(path, 1, ?)=? AND status != 'sent'",
            (len(prefix), prefix),
        ).fetchone()
        return int(row["n"])

    def mark_purged(self, job_ids: Iterable[int], bit: int) -> None:
        ids = [int(i) for i in job_ids]
        conn = self._conn()
        with self._tx(conn):
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                conn.execute(f"UPDATE jobs SET purged = purged | ? WHERE id IN ({','.join('?' * len(chunk))})",
                             (int(bit), *chunk))

    def prune_jobs(self, purged_mask: int, finished_before: float, limit: int = 1000) -> int:
        """Delete settled jobs finished before ``finished_before`` whose ``purged`` has every bit of
        ``purged_mask``, with their (all sent) outbound rows. Returns how many jobs."""
        conn = self._conn()
        with self._tx(conn):
            ids = [int(r["id"]) for r in conn.execute(
                f"SELECT id FROM jobs WHERE {self._SETTLED} AND (purged & ?) = ? AND finished_at < ? LIMIT ?",
                (int(purged_mask), int(purged_mask), finished_before, int(limit)),
            )]
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                marks = ",".join("?" * len(chunk))
                conn.execute(f"DELETE FROM outbound WHERE job_id IN ({marks}) AND status='sent'", chunk)
                conn.execute(f"DELETE FROM jobs WHERE id IN ({marks})", chunk)
        return len(ids)

    # -- outbound ------------------------------------------------------------------------------------------------

    def claim_outbound(self, destination: str, now: float, sr_only: bool = False) -> OutboundRow | None:
        """The next due item for ``destination`` (pending -> sending): structured reports first (the primary result,
        what the technologist waits for), then oldest due first. ``sr_only``: structured reports only."""
        rows = (
            self._conn()
            .execute(
                "UPDATE outbound SET status='sending', updated_at=? WHERE id = (SELECT id FROM outbound"
                " WHERE destination=? AND status='pending' AND next_attempt_at<=?"
                + (" AND kind='sr'" if sr_only else "")
                + " ORDER BY kind <> 'sr', next_attempt_at, id LIMIT 1) RETURNING *",
                (time.time(), destination, now),
            )
            .fetchall()  # run to completion so the autocommit transaction ends
        )
        return _outbound_row(rows[0]) if rows else None

    def _transition(self, item_id: int, sql: str, params: tuple[Any, ...], action: str) -> None:
        cur = self._conn().execute(sql, params)
        if cur.rowcount != 1:
            found = self._conn().execute("SELECT status FROM outbound WHERE id=?", (item_id,)).fetchone()
            state = f"is {found['status']}" if found else "does not exist"
            raise JobStateError(f"cannot {action} outbound item {item_id}: it {state} (expected sending)")

    def mark_sent(self, item_id: int) -> None:
        """sending -> sent."""
        self._transition(
            item_id,
            "UPDATE outbound SET status='sent', last_error='', updated_at=? WHERE id=? AND status='sending'",
            (time.time(), item_id),
            "mark sent",
        )

    def mark_retry(self, item_id: int, error: str, next_attempt_at: float) -> None:
        """A transient failure: sending -> pending, ``attempts + 1``, due again at ``next_attempt_at`` (POSIX s)."""
        self._transition(
            item_id,
            "UPDATE outbound SET status='pending', attempts=attempts+1, last_error=?, next_attempt_at=?, updated_at=?"
            " WHERE id=? AND status='sending'",
            (error, next_attempt_at, time.time(), item_id),
            "retry",
        )

    def mark_dead(self, item_id: int, error: str) -> None:
        """A permanent failure (or attempts exhausted): sending -> dead, ``attempts + 1`` (this failed attempt)."""
        self._transition(
            item_id,
            "UPDATE outbound SET status='dead', attempts=attempts+1, last_error=?, updated_at=?"
            " WHERE id=? AND status='sending'",
            (error, time.time(), item_id),
            "mark dead",
        )

    def requeue_sending(self) -> int:
        """At startup: sending -> pending (the sender died mid-association). Returns how many."""
        cur = self._conn().execute("UPDATE outbound SET status='pending', updated_at=? WHERE status='sending'",
                                   (time.time(),))
        return cur.rowcount

    def dead_letters(self, destination: str | None = None) -> list[OutboundRow]:
        """Dead items, oldest first, optionally for one destination."""
        if destination is None:
            rows = self._conn().execute("SELECT * FROM outbound WHERE status='dead' ORDER BY id").fetchall()
        else:
            rows = self._conn().execute(
                "SELECT * FROM outbound WHERE status='dead' AND destination=? ORDER BY id", (destination,)
            ).fetchall()
        return [_outbound_row(r) for r in rows]

    def resubmit_dead(self, destination: str | None = None, ids: list[int] | None = None) -> int:
        """dead -> pending, due now, attempts reset to 0 (last_error kept). Filters combine; returns how many."""
        sql = "UPDATE outbound SET status='pending', attempts=0, next_attempt_at=?, updated_at=? WHERE status='dead'"
        now = time.time()
        params: list[Any] = [now, now]
        if destination is not None:
            sql += " AND destination=?"
            params.append(destination)
        if ids is not None:
            if not ids:
                return 0
            sql += f" AND id IN ({','.join('?' * len(ids))})"
            params.extend(int(i) for i in ids)
        return self._conn().execute(sql, params).rowcount

    def outbound_summary(self) -> dict[str, dict[str, int]]:
        """destination -> {pending, sending, sent, dead} counts (zeros included)."""
        out: dict[str, dict[str, int]] = {}
        for row in self._conn().execute(
            "SELECT destination, status, COUNT(*) AS n FROM outbound GROUP BY destination, status"
        ):
            out.setdefault(row["destination"], dict.fromkeys(OUTBOUND_STATES, 0))[row["status"]] = int(row["n"])
        return out

    def outbound_for_job(self, job_id: int) -> list[OutboundRow]:
        rows = self._conn().execute("SELECT * FROM outbound WHERE job_id=? ORDER BY id", (job_id,)).fetchall()
        return [_outbound_row(r) for r in rows]

    def next_outbound_due(self, destination: str) -> float | None:
        """Earliest ``next_attempt_at`` of a pending item for ``destination`` (POSIX s), or None."""
        row = self._conn().execute(
            "SELECT MIN(next_attempt_at) AS t FROM outbound WHERE destination=? AND status='pending'", (destination,)
        ).fetchone()
        return None if row is None or row["t"] is None else float(row["t"])


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _job_row(row: sqlite3.Row) -> JobRow:
    try:
        summary = json.loads(row["summary"] or "{}")
    except ValueError:
        summary = {"unparsed": row["summary"]}
    return JobRow(
        id=int(row["id"]),
        status=row["status"],
        sop_class_uid=row["sop_class_uid"],
        sop_instance_uid=row["sop_instance_uid"],
        calling_ae=row["calling_ae"],
        received_at=float(row["received_at"]),
        finished_at=None if row["finished_at"] is None else float(row["finished_at"]),
        error=row["error"],
        summary=summary,
    )


def _outbound_row(row: sqlite3.Row) -> OutboundRow:
    return OutboundRow(
        id=int(row["id"]),
        destination=row["destination"],
        path=Path(row["path"]),
        sop_instance_uid=row["sop_instance_uid"],
        sop_class_uid=row["sop_class_uid"],
        kind=row["kind"],
        attempts=int(row["attempts"]),
        last_error=row["last_error"],
        status=row["status"],
        next_attempt_at=float(row["next_attempt_at"]),
        job_id=None if row["job_id"] is None else int(row["job_id"]),
    )
