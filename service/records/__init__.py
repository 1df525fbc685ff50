"""Request records: every candidate, verdict and choice, kept as JSONL.

``recorder`` appends records off the request path (``--record-dir``), to the files of
``record_file``, counting what it loses in ``drops``; ``format`` is the record schema;
``reader`` reads files back while they are written. Turning them into datasets and
statistics is tooling: :mod:`bestofk.tooling.records`.
"""

from __future__ import annotations

from bestofk.service.records.format import SCHEMA_VERSION, Record, RecordFormatError
from bestofk.service.records.reader import read_records, record_files

__all__ = ["SCHEMA_VERSION", "Record", "RecordFormatError", "read_records", "record_files"]
