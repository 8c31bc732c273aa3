"""experiments/selection/reports.py: each report is rebuilt from exactly the job folders it was written from."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
reports = runpy.run_path(str(ROOT / "experiments" / "selection" / "reports.py"))


@pytest.mark.parametrize("name", list(reports["REPORTS"]))
def test_each_report_names_the_jobs_its_report_was_built_from(name):
    md = (ROOT / "experiments" / "selection" / name / "report.md").read_text()
    jobs = reports["job_folders"](name)
    assert len(jobs) == int(re.search(r"— (\d+) runs?", md).group(1))
    listed = set(re.findall(r"\(`([a-z_]+/[^`/]+)`\)", md))  # the commands name each job as (`family/job`)
    assert {f"{j.parent.name}/{j.name}" for j in jobs} == listed


def test_an_unknown_report_or_an_empty_glob_fails_clearly(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        reports["main"](["report_nope"])
    assert "unknown report report_nope" in capsys.readouterr().err
    monkeypatch.setitem(reports["REPORTS"], "report_4096", ["selection/h100/needle/no_such_job-*"])
    with pytest.raises(SystemExit, match="report_4096: no job folder matches experiments/selection/h100"):
        reports["job_folders"]("report_4096")
