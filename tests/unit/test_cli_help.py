"""`--help` of every subcommand: what a new user runs first (a '%' in a help text breaks it)."""

import argparse

import pytest

from cluster.cli import build_parser


def _commands() -> list[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


@pytest.mark.parametrize("command", _commands())
def test_every_subcommand_prints_its_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    assert "usage: cluster " + command in capsys.readouterr().out


def test_serve_help_shows_the_engine_defaults(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "most sequences decoded together (continuous batching) (default: 16)" in text
    assert "(default: auto)" in text  # --queue-ahead
