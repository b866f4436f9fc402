"""The results store: one SQLite file (WAL mode), one row per job, per-sample scores beside.

A job row and its per-sample scores are written in one transaction, so a job
is either finished with its scores or absent: a killed run loses only the job
it was in. The driver is the only writer. A done row is never replaced by a failed
one, and a store that stays locked is a UserError, never a silently lost result.
"""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np

from robustad.errors import UserError

# How long a write waits for another connection's lock before giving up (SQLite's
# busy timeout). Long enough for another bench process's one-row transactions.
BUSY_TIMEOUT_S = 30.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id       TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,          -- 'fit' or 'eval'
    fit_id       TEXT,                   -- for eval jobs: the fit job they attack
    method       TEXT NOT NULL,
    dataset      TEXT NOT NULL,
    normal_class INTEGER NOT NULL,
    seed         INTEGER NOT NULL,
    attack       TEXT,
    norm         TEXT,
    eps          REAL,
    config       TEXT NOT NULL,          -- JSON: everything that defines the job
    status       TEXT NOT NULL,          -- 'done' or 'failed'
    metrics      TEXT,                   -- JSON
    info         TEXT,                   -- JSON: flags, method facts, device
    error        TEXT,                   -- traceback of a failed job
    started      REAL,
    finished     REAL,
    duration     REAL,
    versions     TEXT,                   -- JSON: library versions
    git_rev      TEXT
);
CREATE TABLE IF NOT EXISTS samples (
    job_id TEXT PRIMARY KEY REFERENCES jobs(job_id),
    labels BLOB NOT NULL,
    clean  BLOB NOT NULL,
    adv    BLOB                          -- NULL for fit jobs
);
CREATE TABLE IF NOT EXISTS maps (        -- anomaly maps of localising detectors on data with masks
    job_id TEXT PRIMARY KEY REFERENCES jobs(job_id),
    masks  BLOB NOT NULL,                -- (N,H,W) pixel labels
    clean  BLOB NOT NULL,                -- (N,H,W) maps of the clean images
    adv    BLOB                          -- (N,H,W) maps of the attacked images; NULL for fit jobs
);
"""

JSON_COLUMNS = ("config", "metrics", "info", "versions")


def _to_blob(a) -> bytes | None:
    if a is None:
        return None
    buf = io.BytesIO()
    np.save(buf, np.asarray(a), allow_pickle=False)
    return buf.getvalue()


def _from_blob(b: bytes | None) -> np.ndarray | None:
    if b is None:
        return None
    return np.load(io.BytesIO(b), allow_pickle=False)


class Store:
    """SQLite job store at ``<out>/bench.sqlite``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)
        self.conn.row_factory = sqlite3.Row
        with self._unlocked():
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.executescript(SCHEMA)
            self.conn.commit()

    @contextlib.contextmanager
    def _unlocked(self):
        """Turn "database is locked" (after the busy timeout) into one sentence (exit 2)."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            raise UserError(
                f"the results store {self.path} is locked: another bench process (or an open "
                "sqlite3 session) is writing to it; wait for it to finish or use another --out"
            ) from exc

    def check_writable(self) -> None:
        """Take and release the write lock: a run checks this before any training, so a
        store held by another process stops it at once instead of losing its first result."""
        with self._unlocked():
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.rollback()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing ------------------------------------------------------------
    def put(
        self,
        row: dict[str, Any],
        labels=None,
        clean=None,
        adv=None,
        maps: dict | None = None,
    ) -> bool:
        """Insert or replace one job (and its per-sample scores) atomically.

        A failed row never replaces a done one (returns False and writes nothing): a later
        failure of the same job (e.g. an unreadable checkpoint) must not delete a finished
        result. A write that stays locked past the busy timeout is a UserError.
        """
        row = dict(row)
        row.setdefault("finished", time.time())
        for col in JSON_COLUMNS:
            if col in row and not isinstance(row[col], str) and row[col] is not None:
                row[col] = json.dumps(row[col], sort_keys=True, default=_json_default)
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._unlocked(), self.conn:  # one transaction
            if row.get("status") != "done":
                # BEGIN IMMEDIATE: the check and the write see the same row
                self.conn.execute("BEGIN IMMEDIATE")
                old = self.conn.execute("SELECT status FROM jobs WHERE job_id = ?", (row["job_id"],))
                if (old.fetchone() or {"status": None})["status"] == "done":
                    return False
            self.conn.execute(f"INSERT OR REPLACE INTO jobs ({cols}) VALUES ({marks})", tuple(row.values()))
            self.conn.execute("DELETE FROM samples WHERE job_id = ?", (row["job_id"],))
            self.conn.execute("DELETE FROM maps WHERE job_id = ?", (row["job_id"],))
            if labels is not None:
                self.conn.execute(
                    "INSERT INTO samples (job_id, labels, clean, adv) VALUES (?, ?, ?, ?)",
                    (row["job_id"], _to_blob(labels), _to_blob(clean), _to_blob(adv)),
                )
            if maps is not None:
                self.conn.execute(
                    "INSERT INTO maps (job_id, masks, clean, adv) VALUES (?, ?, ?, ?)",
                    (row["job_id"], *(_to_blob(maps.get(k)) for k in ("masks", "clean", "adv"))),
                )
        return True

    def update_info(self, job_id: str, info: dict[str, Any]) -> None:
        """Replace one job's ``info`` (e.g. cross-job flags) without touching its samples."""
        text = json.dumps(info, sort_keys=True, default=_json_default)
        with self._unlocked(), self.conn:
            self.conn.execute("UPDATE jobs SET info = ? WHERE job_id = ?", (text, job_id))

    # -- reading ------------------------------------------------------------
    def status(self, job_id: str) -> str | None:
        r = self.conn.execute("SELECT status FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return r["status"] if r else None

    def is_done(self, job_id: str) -> bool:
        return self.status(job_id) == "done"

    def jobs(self, **where: Any) -> list[dict[str, Any]]:
        """Rows as dicts (JSON columns decoded), filtered by equality on columns."""
        clause = " AND ".join(f"{k} = ?" for k in where)
        sql = "SELECT * FROM jobs" + (f" WHERE {clause}" if clause else "") + " ORDER BY rowid"
        rows = []
        for r in self.conn.execute(sql, tuple(where.values())):
            d = dict(r)
            for col in JSON_COLUMNS:
                if d.get(col):
                    d[col] = json.loads(d[col])
            rows.append(d)
        return rows

    def samples(self, job_id: str) -> dict[str, np.ndarray | None] | None:
        r = self.conn.execute("SELECT labels, clean, adv FROM samples WHERE job_id = ?", (job_id,)).fetchone()
        if r is None:
            return None
        return {k: _from_blob(r[k]) for k in ("labels", "clean", "adv")}

    def maps(self, job_id: str) -> dict[str, np.ndarray | None] | None:
        """Masks and clean/attacked anomaly maps of a job (None when it stored none)."""
        r = self.conn.execute("SELECT masks, clean, adv FROM maps WHERE job_id = ?", (job_id,)).fetchone()
        if r is None:
            return None
        return {k: _from_blob(r[k]) for k in ("masks", "clean", "adv")}

    def count(self, **where: Any) -> int:
        clause = " AND ".join(f"{k} = ?" for k in where)
        sql = "SELECT COUNT(*) FROM jobs" + (f" WHERE {clause}" if clause else "")
        return self.conn.execute(sql, tuple(where.values())).fetchone()[0]


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    return str(o)
