"""Stored response parts: a truncated part is set aside and its rows collected again."""
import warnings

import pandas as pd
import pytest

from ifl.collect.store import COLUMNS, PartWriter, load_responses, model_dir


def rows(ids, text="ok"):
    return [dict(model="m", task_id=t, condition="image", prompt="p", response=f"{text} {t}",
                 n_prompt_tokens=3, n_new_tokens=2, seconds=0.1, batch_size=2) for t in ids]


def test_truncated_part_is_set_aside_and_its_rows_collected_again(tmp_path):
    folder = model_dir(tmp_path, "m")
    writer = PartWriter(folder)
    writer.write(rows(["t1", "t2"]))
    broken = writer.write(rows(["t3", "t4"]))
    broken.write_bytes(broken.read_bytes()[:40])  # a copy cut short: no parquet footer
    with pytest.warns(UserWarning, match=r"part-00001.parquet is unreadable.*set aside as "
                                          r"part-00001.parquet.unreadable.*collected again"):
        have = load_responses(tmp_path, "m")
    assert have["task_id"].tolist() == ["t1", "t2"]  # t3, t4 now count as not collected
    assert (folder / "part-00001.parquet.unreadable").exists() and not broken.exists()
    # the next run writes the missing rows again, beside the good part, and all is read back
    PartWriter(folder).write(rows(["t3", "t4"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = load_responses(tmp_path, "m")
    assert again["task_id"].tolist() == ["t1", "t2", "t3", "t4"]
    assert list(again.columns) == COLUMNS
