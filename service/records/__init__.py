"""Request records: every candidate, verdict and choice, kept as JSONL and turned into datasets.

``recorder`` appends records off the request path (``--record-dir``); ``format`` is the record
schema; ``reader`` reads files back while they are written; ``export`` turns records into DPO,
RSFT and KTO datasets; ``stats`` says how much pass@K beats pass@1, i.e. whether training on
these verdicts would pay.
"""

from __future__ import annotations

from bestofk.service.records.format import SCHEMA_VERSION, Record, RecordFormatError
from bestofk.service.records.reader import read_records, record_files

__all__ = ["SCHEMA_VERSION", "Record", "RecordFormatError", "read_records", "record_files"]
