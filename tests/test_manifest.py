"""Run manifests record what produced an output."""

from __future__ import annotations

import json
from pathlib import Path

from unigap.cli import main
from unigap.manifest import MANIFEST_FILE, manifest, write_manifest


def test_a_manifest_holds_versions_settings_seeds_and_times(tmp_path: Path) -> None:
    with manifest("demo", {"n": 3}, seeds=[0, 1], judge={"name": "verifier"}) as record:
        record["device"] = "cpu"
    path = write_manifest(tmp_path, record)
    saved = json.loads(path.read_text())
    assert saved["config"] == {"n": 3} and saved["seeds"] == [0, 1] and saved["judge"] == {"name": "verifier"}
    assert saved["packages"]["torch"] and saved["unigap_version"] and saved["started_at"] <= saved["ended_at"]


def test_world_sample_writes_its_manifest(tmp_path: Path) -> None:
    try:
        main(["world", "sample", "--n", "3", "--seed", "0", "--out", str(tmp_path / "shapes")])
    except SystemExit as exc:
        assert exc.code == 0
    saved = json.loads((tmp_path / "shapes" / MANIFEST_FILE).read_text())
    assert saved["command"] == "world sample" and saved["config"]["n"] == 3



def test_the_commit_is_unigaps_own_not_an_enclosing_projects(monkeypatch) -> None:
    """Installed in a virtual environment inside a user's git project, the project's commit says nothing of unigap."""
    import subprocess

    import unigap.manifest as manifest_module

    package = Path(manifest_module.__file__).resolve().parent
    for toplevel, expected in ((package.parents[1], "abc123"), (Path("/home/user/project"), None)):
        monkeypatch.setattr(subprocess, "run", lambda *a, top=toplevel, **k: subprocess.CompletedProcess(
            a, 0, stdout=f"{top}\nabc123\n", stderr=""))
        assert manifest_module.git_commit() == expected
