"""Errors for people: usage errors exit 2, failures a run can meet exit 1 with one line, --debug re-raises."""

from __future__ import annotations

import pytest

from soraflow.cli.main import main


def test_usage_errors_exit_2_with_a_suggestion(capsys):
    assert main(["train", "--recipe", "tiny-cpu-stage"]) == 2
    err = capsys.readouterr().err
    assert "unknown recipe 'tiny-cpu-stage'" in err and "did you mean tiny-cpu-stage" in err
    assert "Traceback" not in err
    assert main(["run", "--override", "no_dot=1"]) == 2
    assert "--override expects STEP.KEY=JSON" in capsys.readouterr().err


def test_expected_failures_exit_1_with_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["ingest", str(empty), "--out-dir", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("soraflow ingest: error:") and "no videos to ingest" in err and len(err.splitlines()) == 1
    assert main(["data", "status", "--repo", str(tmp_path)]) == 1
    assert "is not a DVC repository" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path):
    from soraflow.components.ingest import IngestError

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(IngestError, match="no videos to ingest"):
        main(["ingest", str(empty), "--out-dir", str(tmp_path / "o"), "--debug"])


def test_run_checks_every_step_before_starting(tmp_path, capsys):
    """A typo in the last step's overrides fails `soraflow run` at once, before any sample video or task."""
    out = tmp_path / "run"
    code = main(["run", "--out-dir", str(out), "--override", "distill.optim.lrr=1e-4",
                 "--override", "filter.thresholds_265={}", "--override", "dit_stage9.max_steps=1",
                 "--override", 'filter.thresholds_768={"min_short_sid": 64}'])
    err = capsys.readouterr().err
    assert code == 2
    assert "distill: unknown config key 'optim.lrr'" in err and "did you mean optim.lr?" in err
    assert "filter: unknown setting 'thresholds_265' (did you mean thresholds_256?)" in err
    assert "unknown step 'dit_stage9'" in err
    assert "filter.thresholds_768: unknown threshold 'min_short_sid' (did you mean min_short_side?)" in err
    assert not (out / "raw").exists() and not (out / "pipeline-root").exists()
    assert main(["run", "--out-dir", str(out), "--recipe", "dit_stage2=no-such-recipe"]) == 2
    assert "dit_stage2: unknown recipe 'no-such-recipe'" in capsys.readouterr().err


@pytest.mark.parametrize("flag, message", [
    ("min_short_sid=3", "--set-768: unknown threshold 'min_short_sid' (did you mean min_short_side?)"),
    ("min_short_side=2.5", "--set-768.min_short_side: expected an integer, got 2.5"),
    ("motion_min=fast", "--set-768.motion_min: expected a number or null, got 'fast'"),
])
def test_filter_threshold_flags_are_checked(tmp_path, capsys, flag, message):
    table = tmp_path / "clips.csv"
    table.write_text("path,text,num_frames,height,width,aspect_ratio,resolution,fps\n")
    assert main(["filter", "--table", str(table), "--out-dir", str(tmp_path / "o"), "--set-768", flag]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
