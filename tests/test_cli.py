"""The CLI's own surface, without Ray: every option explains itself, a tracking URI where nothing
listens fails at once, and hints name the interpreter the user ran."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from study import cli
from study.server import free_port


def _parsers(parser: argparse.ArgumentParser):
    yield parser.prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_cli_argument_has_help_text():
    missing = [
        f"{prog} {action.dest}"
        for prog, parser in _parsers(cli.build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
        and not action.help  # argparse.SUPPRESS (a hidden alias) is a non-empty string
    ]
    assert len(list(_parsers(cli.build_parser()))) > 5
    assert not missing, f"arguments without help: {missing}"


def test_tracking_uri_where_nothing_listens_fails_at_once(capsys):
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    assert cli.main(["list", "--tracking-uri", uri]) == cli.EXIT_FAILED
    assert time.monotonic() - started < 2.0
    err = capsys.readouterr().err
    assert uri in err and "connection refused" in err


def test_hints_name_the_interpreter_the_user_ran(monkeypatch, tmp_path):
    venv_python = tmp_path / ".venv" / "bin" / "python"
    monkeypatch.setattr(sys, "executable", str(venv_python))
    monkeypatch.chdir(tmp_path)
    assert cli.study_command() == ".venv/bin/python -m study"
    monkeypatch.chdir(Path("/"))
    assert cli.study_command() == f"{str(venv_python).lstrip('/')} -m study"
    monkeypatch.setattr(sys, "executable", "/usr/bin/python3")
    monkeypatch.chdir(tmp_path)
    assert cli.study_command() == "/usr/bin/python3 -m study"
