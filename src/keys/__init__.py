"""Managed API keys: records (hashed, scoped, with limits and an expiry) and the key file.

``python -m src.keys create|list|revoke`` manages them; the service reads the same file
(``DFD_KEYS_FILE``) and re-reads it when it changes.
"""

from src.keys.records import (
    UNLIMITED,
    KeyRecord,
    KeyRecordError,
    generate_key,
    key_digest,
    key_id_of,
    new_record,
    parse_expiry,
)
from src.keys.store import FileStamp, KeyFile, KeyStoreError

__all__ = [
    "UNLIMITED",
    "FileStamp",
    "KeyFile",
    "KeyRecord",
    "KeyRecordError",
    "KeyStoreError",
    "generate_key",
    "key_digest",
    "key_id_of",
    "new_record",
    "parse_expiry",
]
