"""Notebook 03 never deletes stored responses: only ones proven to come from other weights (their
weights.json says so) are moved aside; shards without weights.json (collected by hand, e.g. one
process per GPU) are kept."""
import json

import pytest

from ifl.stages.collect_responses import forget_stale


def _shard(out, model="v"):
    shard = out / model / "shard-0-of-2"
    shard.mkdir(parents=True)
    (shard / "part-00000.parquet").write_bytes(b"rows")
    return shard


def test_shards_without_weights_json_are_kept_and_adopted(tmp_path, capsys):
    shard = _shard(tmp_path)
    assert not forget_stale(tmp_path, "v", "weights#1")
    assert (shard / "part-00000.parquet").read_bytes() == b"rows"
    assert json.loads((tmp_path / "v" / "weights.json").read_text()) == {"weights": "weights#1"}
    assert "no weights.json" in capsys.readouterr().out
    assert not forget_stale(tmp_path, "v", "weights#1")  # adopted: the same weights next time


def test_proven_stale_responses_are_moved_aside_not_deleted(tmp_path, capsys):
    _shard(tmp_path)
    forget_stale(tmp_path, "v", "weights#1")
    assert forget_stale(tmp_path, "v", "weights#2")   # notebook 02 retrained the variant
    (aside,) = tmp_path.glob("v.stale-*")
    assert (aside / "shard-0-of-2" / "part-00000.parquet").read_bytes() == b"rows"
    assert json.loads((aside / "weights.json").read_text()) == {"weights": "weights#1"}
    assert not (tmp_path / "v" / "shard-0-of-2").exists()
    assert json.loads((tmp_path / "v" / "weights.json").read_text()) == {"weights": "weights#2"}
    assert str(aside) in capsys.readouterr().out
    _shard(tmp_path)  # and again within the same second: a second folder, nothing overwritten
    assert forget_stale(tmp_path, "v", "weights#3")
    assert len(list(tmp_path.glob("v.stale-*"))) == 2


def test_unreadable_weights_json_names_the_file_and_keeps_the_responses(tmp_path):
    shard = _shard(tmp_path)
    (tmp_path / "v" / "weights.json").write_text("{not json")
    with pytest.raises(ValueError, match="weights.json"):
        forget_stale(tmp_path, "v", "weights#1")
    assert shard.exists()
