"""Regenerate ``tests/data/golden_smoke.json`` after an intended numeric change:
``.venv/bin/python tests/regen_golden.py`` (runs the smoke tables in a temporary folder, one thread,
exactly as ``tests/test_smoke_tables.py`` does). Commit the new file with the reason."""
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import conftest  # noqa: E402,F401  (same environment and thread count as the tests)

from test_smoke_tables import GOLDEN, REPO, TABLES, _scores  # noqa: E402

from runners import run as run_cli  # noqa: E402

with tempfile.TemporaryDirectory() as d:
    os.environ["KDQAT_RESULTS"] = d
    out = {}
    for t in TABLES:
        assert run_cli.main([str(REPO / "registry" / f"{t}.toml"), "--no-mlflow"]) == 0
        out[t] = _scores(Path(d), t)
GOLDEN.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
print(f"wrote {GOLDEN}")
