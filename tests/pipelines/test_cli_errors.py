"""Errors for people: usage errors exit 2, failures a run can meet exit 1 with one line, --debug re-raises."""

from __future__ import annotations

import pytest

from cli.main import main


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
    from components.ingest import IngestError

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(IngestError, match="no videos to ingest"):
        main(["ingest", str(empty), "--out-dir", str(tmp_path / "o"), "--debug"])


def test_run_checks_every_step_before_starting(tmp_path, capsys):
    """A typo in the last step's overrides fails `soraflow run` at once, before any sample video or task."""
    out = tmp_path / "run"
    code = main(["run", "--out-dir", str(out), "--override", "distill.optim.lrr=1e-4",
                 "--override", "filter.thresholds_265={}", "--override", "dit_stage9.max_steps=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "distill: unknown config key 'optim.lrr'" in err and "did you mean optim.lr?" in err
    assert "filter: unknown setting 'thresholds_265' (did you mean thresholds_256?)" in err
    assert "unknown step 'dit_stage9'" in err
    assert not (out / "raw").exists() and not (out / "pipeline-root").exists()
    assert main(["run", "--out-dir", str(out), "--recipe", "dit_stage2=no-such-recipe"]) == 2
    assert "dit_stage2: unknown recipe 'no-such-recipe'" in capsys.readouterr().err
