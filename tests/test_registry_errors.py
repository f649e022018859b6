"""Malformed registry files fail at load time with file, cell/entry and field named (DESIGN.md §5).

Each ``tests/data/bad_registry/*.toml`` starts with ``# expect: CELL | FIELD | message fragment``;
the file must raise ``RegistryError`` whose ``cell`` and ``field`` equal the expectation exactly and
whose message reads ``"FILE: CELL: FIELD: ..."`` and contains the fragment.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from runners.registry import RegistryError, load_table

BAD = Path(__file__).resolve().parent / "data" / "bad_registry"
FILES = sorted(BAD.glob("*.toml"))


def _expectation(path: Path) -> tuple[str, str, str]:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: CELL | FIELD | text'"
    cell, field, fragment = (x.strip() for x in first[len("# expect: "):].split("|", 2))
    return cell, field, fragment


def test_at_least_twenty_malformed_files():
    assert len(FILES) >= 20


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_malformed_file_names_file_cell_field(path: Path):
    cell, field, fragment = _expectation(path)
    with pytest.raises(RegistryError) as info:
        load_table(path)
    e = info.value
    assert isinstance(e, ValueError)
    assert (e.file, e.cell, e.field) == (str(path), cell, field)
    assert e.entry == e.cell
    assert str(e) == f"{path}: {cell}: {field}: {e.message}"
    assert fragment in e.message


def test_missing_file(tmp_path: Path):
    with pytest.raises(RegistryError) as info:
        load_table(tmp_path / "nope.toml")
    assert (info.value.cell, info.value.field) == ("-", "file")
    assert str(info.value).startswith(f"{tmp_path / 'nope.toml'}: -: file: cannot read")


def test_bad_job_filters_are_registry_errors():
    good = BAD.parent.parent.parent / "registry" / "glue_bert_base.toml"
    table = load_table(good)
    for kw, field, text in (({"rows": ["mapp"]}, "rows", "unknown row id 'mapp'"),
                            ({"columns": ["wnli"]}, "columns", "unknown column id 'wnli'"),
                            ({"seeds": [7]}, "seeds", "seed 7 is not a seed of the selected cells")):
        with pytest.raises(RegistryError) as info:
            table.jobs(**kw)
        assert (info.value.cell, info.value.field) == ("-", field)
        assert text in info.value.message
