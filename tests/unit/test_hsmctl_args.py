"""hsmctl's argument parsing: -o works before and after the command, as with kubectl."""

from __future__ import annotations

from hsmd.hsmctl.cli import build_parser


def test_output_flag_before_and_after_the_command() -> None:
    parser = build_parser()
    assert parser.parse_args(["-o", "json", "get", "team/db"]).output == "json"
    assert parser.parse_args(["get", "team/db", "-o", "yaml"]).output == "yaml"
    assert parser.parse_args(["get", "team/db"]).output == "text"
    assert parser.parse_args(["list", "--output", "json"]).output == "json"
