"""sub_model_construct/progress.py: a bar on a terminal, plain lines elsewhere (one per tenth of the work and the
last), nothing at all for `lines=0` or when disabled; FEDPFT_PROGRESS overrides the choice."""

from __future__ import annotations

from sub_model_construct import progress
from sub_model_construct.progress import Progress


def test_lines_when_not_a_terminal(monkeypatch, capsys):
    monkeypatch.setenv(progress.ENV, "lines")
    bar = Progress(25, "alignment", initial=0)
    for step in range(25):
        bar.update(1, loss=f"{step / 10:.4f}")
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[1] for line in lines] == [
        "3/25",
        "6/25",
        "9/25",
        "12/25",
        "15/25",
        "18/25",
        "21/25",
        "24/25",
        "25/25",
    ]
    assert lines[-1].startswith("alignment: 25/25 steps, loss 2.4000, ") and lines[-1].endswith(" s")


def test_resumed_work_counts_from_where_it_was(monkeypatch, capsys):
    monkeypatch.setenv(progress.ENV, "lines")
    bar = Progress(10, "distill", initial=7)
    for _ in range(3):
        bar.update()
    assert [line.split()[1] for line in capsys.readouterr().err.splitlines()] == ["8/10", "9/10", "10/10"]


def test_silent_when_disabled_or_without_lines(monkeypatch, capsys):
    monkeypatch.setenv(progress.ENV, "lines")
    for bar in (Progress(4, "x", enabled=False), Progress(4, "round 1 clients", lines=0)):
        bar.update(4)
        bar.close()
    assert capsys.readouterr().err == ""


def test_the_choice(monkeypatch):
    monkeypatch.setenv(progress.ENV, "bars")
    assert progress.interactive()
    monkeypatch.setenv(progress.ENV, "lines")
    assert not progress.interactive()
    monkeypatch.delenv(progress.ENV)
    assert progress.interactive() is False  # pytest captures stderr: not a terminal
