"""Admin commands: `dicom-node status`, `retry`, `echo`, `send`.

``status`` and ``retry`` work on the storage directory (``--storage DIR``, or the ``node.storage`` of ``--config F``)
whether the node runs or not: all state is in ``<storage>/queue.sqlite3``. Nothing they print carries PHI (UIDs, AE
titles, SOP class names, times, PHI-free error messages only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dicom_node.config import ConfigError, load_config
from dicom_node.jobqueue import JobQueue
from dicom_node.outbound import Outcome, echo, parse_peer, store_files
from dicom_node.retention import spool_usage
from nodecore.config_schema import Timeouts
from nodecore.sopclasses import sop_class_name

# ---- storage selection -------------------------------------------------------------------------------------------


def _add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--config", type=Path, help="node configuration (its node.storage is used)")
    group.add_argument("--storage", type=Path, help="the node's storage directory")


def _open_queue(args: argparse.Namespace) -> JobQueue:
    """The JobQueue of the selected storage; raises SystemExit(2) with a message when there is none."""
    if args.storage is not None:
        storage = Path(args.storage)
    else:
        try:
            storage = load_config(args.config).node.storage
        except ConfigError as exc:
            print(f"invalid configuration:\n{exc}", file=sys.stderr)
            raise SystemExit(2) from None
    db = storage / "queue.sqlite3"
    if not db.exists():
        print(f"no job database at {db} (has the node run with this storage directory?)", file=sys.stderr)
        raise SystemExit(2)
    return JobQueue(db)


def _size(n: int) -> str:
    """Bytes as B, KiB, MiB, GiB or TiB (binary units)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


# ---- status ------------------------------------------------------------------------------------------------------


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    _add_storage_arguments(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--limit", type=int, default=20, help="how many recent jobs to list (default 20)")


def status_report(queue: Any, limit: int, storage: Path | None = None) -> dict[str, Any]:
    """Jobs (counts and the newest ``limit``), outbound counts per destination, every dead letter, and with
    ``storage`` the disk use of the spool (``retention.spool_usage``, bytes)."""
    jobs = queue.recent_jobs(limit)
    report: dict[str, Any] = {
        "jobs": {
            "counts": queue.job_counts(),
            "recent": [
                {
                    "id": j.id,
                    "status": j.status,
                    "sop_class_uid": j.sop_class_uid,
                    "sop_instance_uid": j.sop_instance_uid,
                    "calling_ae": j.calling_ae,
                    "received_at": j.received_at,
                    "finished_at": j.finished_at,
                    "route": j.summary.get("route"),
                    "error": j.error,
                }
                for j in jobs
            ],
        },
        "outbound": queue.outbound_summary(),
        "dead_letters": [
            {
                "id": r.id,
                "destination": r.destination,
                "kind": r.kind,
                "sop_instance_uid": r.sop_instance_uid,
                "attempts": r.attempts,
                "job_id": r.job_id,
                "last_error": r.last_error,
            }
            for r in queue.dead_letters()
        ],
    }
    if storage is not None:
        report["spool"] = asdict(spool_usage(storage))
    return report


def run_status(args: argparse.Namespace) -> int:
    queue = _open_queue(args)
    report = status_report(queue, args.limit, storage=queue.db_path.parent)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0
    counts = report["jobs"]["counts"]
    print("jobs: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if report["jobs"]["recent"]:
        print(f"recent jobs (newest first, at most {args.limit}):")
        for j in report["jobs"]["recent"]:
            line = (f"  #{j['id']:<6} {j['status']:<8} {_when(j['received_at'])}  {sop_class_name(j['sop_class_uid'])}"
                    f"  sop={j['sop_instance_uid']}  from {j['calling_ae'] or '?'}  route={j['route'] or '-'}")
            if j["error"]:
                line += f"\n           error: {j['error']}"
            print(line)
    print("outbound queue:")
    if not report["outbound"]:
        print("  (empty)")
    for dest, c in sorted(report["outbound"].items()):
        print(f"  {dest}: pending {c['pending']}, sending {c['sending']}, sent {c['sent']}, dead {c['dead']}")
    u = report["spool"]
    print(f"spool {queue.db_path.parent}: objects {u['objects_files']} file(s) {_size(u['objects_bytes'])}, "
          f"results {u['results_files']} file(s) {_size(u['results_bytes'])}, database {_size(u['database_bytes'])};"
          f" disk free {_size(u['free_bytes'])} of {_size(u['total_bytes'])}")
    if report["dead_letters"]:
        print("dead letters (resubmit with `dicom-node retry`):")
        for d in report["dead_letters"]:
            print(f"  id {d['id']} -> {d['destination']} {d['kind']} sop={d['sop_instance_uid']} "
                  f"attempts {d['attempts']}: {d['last_error']}")
    return 0


# ---- retry -------------------------------------------------------------------------------------------------------


def add_retry_arguments(parser: argparse.ArgumentParser) -> None:
    _add_storage_arguments(parser)
    parser.add_argument("--destination", help="only dead letters of this destination")
    parser.add_argument("--id", type=int, nargs="+", dest="ids", metavar="N", help="only these outbound item ids")


def run_retry(args: argparse.Namespace) -> int:
    queue = _open_queue(args)
    dead = queue.dead_letters(args.destination)
    if args.ids is not None:
        known = {r.id for r in dead}
        missing = [i for i in args.ids if i not in known]
        if missing:
            where = f" for destination {args.destination}" if args.destination else ""
            print(f"not dead letters{where}: {', '.join(map(str, missing))}", file=sys.stderr)
    n = queue.resubmit_dead(args.destination, args.ids)
    print(f"resubmitted {n} dead letter(s); a running node sends them within a second or two")
    return 0 if n or not dead else 1


# ---- echo --------------------------------------------------------------------------------------------------------


def _add_peer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--aet", default="DICOMNODE", help="our (calling) AE title (default DICOMNODE)")
    parser.add_argument("--timeout", type=float, default=30.0, help="network/DIMSE timeout in seconds (default 30)")


def _timeouts(seconds: float) -> Timeouts:
    return Timeouts(acse=seconds, dimse=seconds, network=seconds, connection=min(seconds, 10.0))


def add_echo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("peer", metavar="AE@HOST:PORT", help="the remote AE")
    _add_peer_arguments(parser)


def run_echo(args: argparse.Namespace) -> int:
    try:
        dest = parse_peer(args.peer, calling_ae=args.aet)
    except ValueError as exc:
        print(f"dicom-node echo: {exc}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    ok, message = echo(dest, _timeouts(args.timeout))
    ms = (time.monotonic() - t0) * 1000
    print(f"C-ECHO {dest.ae_title}@{dest.host}:{dest.port} from {args.aet}: {'OK' if ok else 'FAILED'} "
          f"({message}, {ms:.0f} ms)")
    return 0 if ok else 1


# ---- send --------------------------------------------------------------------------------------------------------


def add_send_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="FILE|DIR", help="files and directories (recursive)")
    parser.add_argument("--to", required=True, metavar="AE@HOST:PORT", help="the remote AE")
    _add_peer_arguments(parser)


def _is_dicom(path: Path) -> bool:
    """A DICOM Part 10 file (preamble + 'DICM')."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def iter_files(paths: list[Path]) -> Iterator[Path]:
    for p in paths:
        if p.is_dir():
            yield from sorted(q for q in p.rglob("*") if q.is_file())
        else:
            yield p


def run_send(args: argparse.Namespace) -> int:
    try:
        dest = parse_peer(args.to, calling_ae=args.aet)
    except ValueError as exc:
        print(f"dicom-node send: {exc}", file=sys.stderr)
        return 2
    files: list[Path] = []
    problems = 0
    for f in iter_files(args.paths):
        if not f.exists():
            print(f"MISSING  {f}: no such file or directory")
            problems += 1
        elif not _is_dicom(f):
            print(f"SKIPPED  {f}: not a DICOM file (no DICM prefix)")
        else:
            files.append(f)
    if not files:
        print("nothing to send", file=sys.stderr)
        return 1
    results = store_files(dest, files, _timeouts(args.timeout))
    sent = 0
    for res in results:
        if res.outcome is Outcome.SENT:
            sent += 1
            print(f"OK       {res.path}: {res.reason} (sop={res.sop_instance_uid})")
        else:
            problems += 1
            print(f"FAILED   {res.path}: {res.reason} ({res.outcome.value}; sop={res.sop_instance_uid or '?'})")
    print(f"{sent}/{len(files)} sent to {dest.ae_title}@{dest.host}:{dest.port}")
    return 0 if problems == 0 else 1
