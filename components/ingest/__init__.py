"""Ingest step: raw videos -> 2–8 s H.264 clips + clip table (spec D.1, D.2)."""

from components.ingest.ingest import IngestParams, IngestResult, ingest, plan_clips, process_source, read_inputs

__all__ = ["IngestParams", "IngestResult", "ingest", "plan_clips", "process_source", "read_inputs"]
