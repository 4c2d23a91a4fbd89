"""The README is a user guide whose result tables come from the results JSON."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tables_module():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "docs" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_tables_are_what_the_results_json_says() -> None:
    module = _tables_module()
    for document in module.DOCUMENTS:
        text = document.read_text()
        regenerated, changed = module.render(text)
        assert not changed, f"stale tables in {document.name} (run `make readme-tables`): {changed}"
        assert regenerated == text


def test_the_readme_is_a_short_user_guide() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 260
    for word in ("SPEC", "../shared", "/tmp/", "session"):
        assert word not in text
    assert not re.search(r"\bissue\s*#?\d", text, re.IGNORECASE)
    for arxiv in ("2603.17044", "2507.16663", "2602.15772", "2601.21406"):
        assert arxiv in text


def test_an_empty_table_is_filled_without_touching_the_text_around_it() -> None:
    module = _tables_module()
    text = "intro\n<!-- table:sampling -->\n<!-- /table -->\nmiddle ## section\n<!-- table:damage-agreement -->\nold\n<!-- /table -->\nend\n"
    regenerated, changed = module.render(text)
    assert changed == ["sampling", "damage-agreement"]
    assert "middle ## section" in regenerated and regenerated.endswith("<!-- /table -->\nend\n")
    assert module.render(regenerated) == (regenerated, [])


def test_an_arm_without_a_recorded_wall_time_reads_as_a_dash_not_zero_minutes() -> None:
    minutes = _tables_module()._minutes
    assert minutes({"sft": 90.0}, "sft") == "1.5" and minutes({"sft": 90.0}, "unimrg") == "—"


def test_the_tables_script_reads_utf8_whatever_the_locale() -> None:
    """Under an ASCII or cp1252 locale the script read the README in the locale's encoding: a crash, or (without
    --check) a README rewritten with every non-ASCII character garbled."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    done = subprocess.run([sys.executable, "-X", "utf8=0", str(ROOT / "docs" / "readme_tables.py"), "--check"],
                          env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-500:]
