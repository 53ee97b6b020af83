"""The curated dataset under DVC: `data/` in the repository, pinned by `data.dvc` (`docs/curation.md`)."""

from soraflow.components.data.dataset import DATA_DIR, POINTER, DataError, pull, push, revision, status, version

__all__ = ["DATA_DIR", "POINTER", "DataError", "version", "push", "pull", "status", "revision"]
