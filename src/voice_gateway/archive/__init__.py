"""The archive of completed sessions (SQLite or PostgreSQL), its archiver and the export.

- ``db.Archive``: open / upsert / get / list / history / delete / analytics rows.
- ``archiver.Archiver``: completed queue -> archive, at-least-once + idempotent upsert.
- ``export``: CSV / JSON Lines / Parquet analytics export and its CLI glue (imports pyarrow,
  so it is not imported here).

The names below are imported on first use, so that importing a submodule (``voice-gateway
export`` imports ``export`` and ``db``) does not import the archiver, its store and metrics.

See docs/archive.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from voice_gateway.archive.archiver import Archiver
    from voice_gateway.archive.db import Archive, ArchiveRejected
    from voice_gateway.archive.schema import LATEST_VERSION, SchemaTooNew

__all__ = ["LATEST_VERSION", "Archive", "ArchiveRejected", "Archiver", "SchemaTooNew"]

_SOURCES = {
    "Archiver": "voice_gateway.archive.archiver",
    "Archive": "voice_gateway.archive.db",
    "ArchiveRejected": "voice_gateway.archive.db",
    "LATEST_VERSION": "voice_gateway.archive.schema",
    "SchemaTooNew": "voice_gateway.archive.schema",
}


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(source), name)
    globals()[name] = value
    return value
