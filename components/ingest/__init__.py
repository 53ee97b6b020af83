"""Ingest step: raw videos -> 2–8 s H.264 clips + clip table (`docs/curation.md`)."""

from soraflow.components.ingest.ingest import (ClipCutter, IngestError, IngestParams, IngestResult, ingest, process_source,
                                      read_inputs)

__all__ = ["ClipCutter", "IngestError", "IngestParams", "IngestResult", "ingest", "process_source", "read_inputs"]
