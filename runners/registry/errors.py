"""``RegistryError``: a bad registry entry, named by file, cell (or entry) and field (DESIGN.md §5).

The message reads ``"FILE: CELL: FIELD: what is wrong"``. CELL is a cell address
``table/row/column`` or an entry such as ``rows[map]``, ``columns[rte]``, ``cells[map/rte]``,
``published[map.rte]``, ``defaults``, ``table``; ``-`` when the whole file is concerned (syntax).
"""
from __future__ import annotations

from pydantic import ValidationError


class RegistryError(ValueError):
    """Raised by ``load_table`` / ``Table.jobs`` before any work is done."""

    def __init__(self, file: str, cell: str, field: str, message: str):
        self.file, self.cell, self.field, self.message = str(file), cell, field, message
        super().__init__(f"{self.file}: {cell}: {field}: {message}")

    @property
    def entry(self) -> str:
        """Alias of ``cell`` for errors about entries that are not cells."""
        return self.cell


def _entry(raw: dict, loc: tuple) -> tuple[str, tuple]:
    """(entry name, remaining loc) of a pydantic error location in the raw TOML dict."""
    if not loc:
        return "-", ()
    head, rest = loc[0], loc[1:]
    items = raw.get(head) if isinstance(raw, dict) else None
    if head in ("rows", "columns", "cells") and rest and isinstance(rest[0], int) and isinstance(items, list):
        item = items[rest[0]] if rest[0] < len(items) and isinstance(items[rest[0]], dict) else {}
        if head == "cells":
            name = f"{item.get('row', '?')}/{item.get('column', '?')}"
        else:
            name = str(item.get("id", f"#{rest[0]}"))
        return f"{head}[{name}]", rest[1:]
    if head in ("published", "published_avg", "models") and rest:
        return f"{head}[{rest[0]}]", rest[1:]
    if head in ("table", "defaults") or head in ("rows", "columns", "cells"):
        return str(head), rest
    return "-", loc


def from_validation(file: str, raw: dict, err: ValidationError) -> RegistryError:
    """The first pydantic error (unknown fields first: usually a typo) as a RegistryError; the count
    of further errors is appended."""
    errors = sorted(err.errors(include_url=False), key=lambda e: e["type"] != "extra_forbidden")
    e = errors[0]
    entry, rest = _entry(raw, tuple(e["loc"]))
    field = ".".join(str(p) for p in rest) or "-"
    if e["type"] == "extra_forbidden":
        msg = f"unknown field {str(rest[-1]) if rest else e['loc'][-1]!r}"
    elif e["type"] == "missing":
        msg = "required field is missing"
    else:
        msg = f"{e['msg']} (got {e.get('input')!r})"
    if len(errors) > 1:
        msg += f" (and {len(errors) - 1} more error(s))"
    return RegistryError(file, entry, field, msg)
