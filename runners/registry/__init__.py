"""The registry: TOML tables -> validated cells -> hashed jobs (DESIGN.md §3, §5).

    from runners.registry import load_table
    table = load_table("registry/glue_bert_large.toml")
    table.cells()                       # every cell, with its resolved config and published numbers
    table.cell("glue_bert_large/map/rte")
    table.jobs(rows=["map"], seeds=[42])  # teachers first

Modules: ``schema`` (the TOML schema), ``table`` (inheritance, resolution, jobs, hashing),
``lookups`` (names validated against ``kdqat``), ``errors`` (``RegistryError``).
"""
from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import ValidationError

from runners.registry.errors import RegistryError, from_validation
from runners.registry.schema import TableFile
from runners.registry.table import Cell, Job, Table, canonical_json, config_hash

__all__ = ["Cell", "Job", "RegistryError", "Table", "canonical_json", "config_hash", "load_table"]


def load_table(path: str | Path, max_steps: int | None = None) -> Table:
    """Read, validate and resolve a table file; ``RegistryError`` on any bad entry (nothing run).

    ``max_steps`` caps every job's optimizer steps (teachers too); it is part of the job configs,
    so capped jobs have their own hashes.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise RegistryError(str(path), "-", "file", f"cannot read: {e.strerror or e}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RegistryError(str(path), "-", "toml", f"TOML syntax error: {e}") from None
    try:
        spec = TableFile.model_validate(raw)
    except ValidationError as e:
        raise from_validation(str(path), raw, e) from None
    return Table(path, spec, max_steps=max_steps)
