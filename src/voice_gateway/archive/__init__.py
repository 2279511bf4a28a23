"""The archive of completed sessions (SQLite or PostgreSQL), its archiver and the export.

- ``db.Archive``: open / upsert / get / list / history / delete / analytics rows.
- ``archiver.Archiver``: completed queue -> archive, at-least-once + idempotent upsert.
- ``export``: CSV / JSON Lines / Parquet analytics export and its CLI glue (imports pyarrow,
  so it is not imported here).

See docs/archive.md.
"""

from __future__ import annotations

from voice_gateway.archive.archiver import Archiver
from voice_gateway.archive.db import Archive, ArchiveRejected
from voice_gateway.archive.schema import LATEST_VERSION, SchemaTooNew

__all__ = ["LATEST_VERSION", "Archive", "ArchiveRejected", "Archiver", "SchemaTooNew"]
