"""The one-owner contracts of common/: the KEY=VALUE grammar, the clip table's reader/writer, the dtype names."""

import pandas as pd
import pytest
import torch

from soraflow.common.clip_table import REQUIRED_COLUMNS, load_table, read_table, write_table
from soraflow.common.dtypes import DTYPE_NAMES, dtype_name, torch_dtype
from soraflow.common.overrides import OverrideError, parse_overrides, parse_pairs, parse_step_overrides, parse_value
from soraflow.common.stages import AE_FROM_STAGE, DATA_SET_BY_STAGE, INIT_FROM_STAGE, STAGES


def test_values_are_json_when_they_parse_else_the_string():
    assert parse_value("1e-5") == 1e-5 and parse_value("true") is True and parse_value("[1, 2]") == [1, 2]
    assert parse_value("ckpts/a.safetensors") == "ckpts/a.safetensors" and parse_value('"7"') == "7"
    assert parse_value("none") == "none" and parse_value("None", none_words=True) is None
    assert parse_value("", none_words=True) is None


def test_override_forms_and_their_errors_name_the_option():
    assert parse_overrides(["optim.lr=1e-4", "data.table=t.parquet", "x=a=b"]) == {
        "optim.lr": 1e-4, "data.table": "t.parquet", "x": "a=b"}  # only the first "=" splits
    assert parse_step_overrides(["dit_stage1.max_steps=4", "dit_stage1.optim.lr=0.1", "ingest.clip_max=4"]) == {
        "dit_stage1": {"max_steps": 4, "optim.lr": 0.1}, "ingest": {"clip_max": 4}}
    assert parse_pairs(["dit_stage1=tiny-cpu-stage1"], "--recipe", typed=False) == {"dit_stage1": "tiny-cpu-stage1"}
    with pytest.raises(OverrideError, match=r"--override expects key=value, got 'lr'"):
        parse_overrides(["lr"])
    with pytest.raises(OverrideError, match=r"--override expects STEP\.KEY=JSON, got max_steps="):
        parse_step_overrides(["max_steps=4"])
    with pytest.raises(OverrideError, match=r"--param expects NAME=VALUE, got '=x'"):
        parse_pairs(["=x"], "--param", "NAME=VALUE")


def test_clip_table_round_trip_and_reading_rules(tmp_path):
    df = pd.DataFrame({"path": ["clips/a.mp4", "/abs/b.mp4"], "text": ["NA", ""], "num_frames": [48, 49],
                       "height": [144, 144], "width": [256, 256], "aspect_ratio": [0.5625, 0.5625],
                       "resolution": [36864, 36864], "fps": [24.0, 30.0]})
    for name in ("t.parquet", "t.csv"):
        path = write_table(df, tmp_path / name)
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind
        back = read_table(path)
        assert tuple(back.columns) == REQUIRED_COLUMNS
        assert back["text"].iloc[0] == "NA"  # a caption "NA" is text, not a missing value
        loaded = load_table(path)
        assert loaded["path"].tolist() == [str(tmp_path / "clips/a.mp4"), "/abs/b.mp4"]  # relative to the table
        assert loaded["text"].tolist() == ["NA", ""]
    with pytest.raises(ValueError, match=r"lacks columns \['fps'\]"):
        load_table(df.drop(columns=["fps"]))
    with pytest.raises(ValueError, match=r"x\.txt: a table is \.parquet, \.csv, \.tsv or \.jsonl"):
        (tmp_path / "x.txt").write_text("")
        read_table(tmp_path / "x.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_table(tmp_path / "missing.parquet")


def test_dtype_names_and_stage_tables_are_consistent():
    assert [torch_dtype(n) for n in DTYPE_NAMES] == [torch.bfloat16, torch.float16, torch.float32]
    assert [dtype_name(torch_dtype(n)) for n in DTYPE_NAMES] == list(DTYPE_NAMES)
    assert torch_dtype(None, torch.float32) is torch.float32
    with pytest.raises(ValueError, match="'int8' is not one of bf16, fp16, fp32"):
        torch_dtype("int8")
    assert set(DATA_SET_BY_STAGE) == set(STAGES)
    # every stage but dit_stage1 (which starts from FLUX weights or at random) starts from an export of ours
    assert set(INIT_FROM_STAGE) == set(STAGES) - {"dit_stage1"}
    assert all(set(v) <= set(STAGES) for v in INIT_FROM_STAGE.values())
    assert set(AE_FROM_STAGE.values()) <= set(STAGES)
