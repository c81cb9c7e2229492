"""``python -m src.keys create|list|revoke``: manage the service's API keys in ``DFD_KEYS_FILE``.

``create`` prints the new key once, alone on standard output (so ``KEY=$(python -m src.keys
create ...)`` works); everything else goes to standard error. Every change writes an audit line.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
from datetime import datetime
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from src.keys.records import KeyRecord, KeyRecordError, parse_expiry
from src.keys.store import KeyFile, KeyStoreError

audit_logger = logging.getLogger("src.audit")


class _KeysFileSetting(BaseSettings):
    """Only ``DFD_KEYS_FILE``, from the environment or ``.env`` as the service reads it (the
    full ``Settings`` would also insist on a model checkpoint)."""

    model_config = SettingsConfigDict(
        env_prefix="DFD_", env_file=".env", env_ignore_empty=True, extra="ignore"
    )
    keys_file: Path | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m src.keys",
        description="Manage API keys: stored hashed in DFD_KEYS_FILE (or --file), which the "
        "service re-reads on change.",
    )
    parser.add_argument("--file", type=Path, help="the key file (default: DFD_KEYS_FILE)")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="make a key; prints it once")
    create.add_argument("--name", required=True, help="unique among active keys; in metrics")
    create.add_argument(
        "--scopes", default="infer", help="comma-separated: infer, history, admin (default infer)"
    )
    create.add_argument("--rate", help="e.g. 120/minute; unlimited; default: DFD_RATE_LIMIT")
    create.add_argument("--quota", help="e.g. 10000/day; unlimited; default: DFD_QUOTA")
    create.add_argument("--expires", help="e.g. 90d, 12h, 2w, or a date such as 2027-01-31")
    listing = commands.add_parser("list", help="show the keys (never the keys themselves)")
    listing.add_argument("--json", action="store_true", help="one JSON document")
    revoke = commands.add_parser("revoke", help="revoke the key with this name")
    revoke.add_argument("name")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    audit_logger.setLevel(logging.INFO)  # audit lines are written whatever the root level
    path = args.file or _KeysFileSetting().keys_file
    if path is None:
        print("error: set DFD_KEYS_FILE or pass --file", file=sys.stderr)
        return 2
    store = KeyFile(path)
    try:
        if args.command == "create":
            return _create(store, args)
        if args.command == "list":
            return _list(store, as_json=args.json)
        return _revoke(store, args.name)
    except (KeyStoreError, KeyRecordError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, KeyRecordError) else 1


def _create(store: KeyFile, args: argparse.Namespace) -> int:
    expires_at = parse_expiry(args.expires) if args.expires else None
    scopes = [s for s in args.scopes.split(",") if s.strip()]
    key, record = store.create(args.name, scopes, args.rate, args.quota, expires_at)
    _audit("key created", record)
    print(
        f"created key {record.name!r} (id {record.key_id}, scopes {','.join(record.scopes)}, "
        f"rate {record.rate or 'default'}, quota {record.quota or 'default'}, expires "
        f"{_when(record.expires_at) or 'never'}) in {store.path}; it is shown only now:",
        file=sys.stderr,
    )
    print(key)
    return 0


def _list(store: KeyFile, as_json: bool) -> int:
    records = store.read()
    if as_json:
        entries = [{**r.to_json(), "status": r.status()} for r in records]
        for entry in entries:
            del entry["sha256"]
        print(json.dumps({"keys": entries}, indent=2))
        return 0
    header = ("NAME", "KEY_ID", "SCOPES", "RATE", "QUOTA", "CREATED", "EXPIRES", "STATUS")
    table = [header, *(_row(r) for r in records)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


def _revoke(store: KeyFile, name: str) -> int:
    for record in store.revoke(name):
        _audit("key revoked", record)
        print(f"revoked key {record.name!r} (id {record.key_id})", file=sys.stderr)
    return 0


def _row(record: KeyRecord) -> tuple[str, ...]:
    return (
        record.name,
        record.key_id,
        ",".join(record.scopes),
        record.rate or "default",
        record.quota or "default",
        _when(record.created_at) or "",
        _when(record.expires_at) or "never",
        record.status(),
    )


def _when(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment is not None else None


def _audit(action: str, record: KeyRecord) -> None:
    audit_logger.info(
        "%s: name=%s key_id=%s scopes=%s rate=%s quota=%s expires=%s by=%s",
        action,
        record.name,
        record.key_id,
        ",".join(record.scopes),
        record.rate or "default",
        record.quota or "default",
        _when(record.expires_at) or "never",
        _os_user(),
    )


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
