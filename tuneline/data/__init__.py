"""Data layer: every supported source and shape in, one validated `RecordSet` out.

The pipeline only needs these four functions; everything else is an implementation
detail that may move between modules.
"""

from tuneline.data.loader import load_records, source_fingerprint
from tuneline.data.records import Record, RecordSet, fingerprint
from tuneline.data.summary import render_summary_html, summarize

__all__ = [
    "Record",
    "RecordSet",
    "fingerprint",
    "load_records",
    "render_summary_html",
    "source_fingerprint",
    "summarize",
]
