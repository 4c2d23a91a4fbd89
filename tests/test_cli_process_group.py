"""Under a launcher the CLI leaves its process group before exit (`unigap.distributed.close`): a process that exits
with a gloo group open can abort at interpreter exit, failing a finished run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch.distributed as dist

from unigap import distributed
from unigap.cli import main


def test_the_cli_closes_a_joined_process_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "1")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(SystemExit) as exit_:
            main(["world", "sample", "--n", "2", "--seed", "0", "--out", str(tmp_path / "shapes")])
        assert exit_.value.code == 0 and (tmp_path / "shapes" / "samples.jsonl").is_file()
        assert not dist.is_initialized()
    finally:
        distributed.close()  # a no-op when the CLI closed it
    assert not dist.is_initialized()
