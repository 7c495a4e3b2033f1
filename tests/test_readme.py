"""Every command the README shows is a real one: fraudctl lines parse with fraudctl's own parser, make
targets exist, scripts and modules exist. (Running them is the demo's job: `fraudctl demo run` executes
the quickstart's steps, tested end to end in tests/test_demo.py.)"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

from fraudctl import cli

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    lines = []
    for block in re.findall(r"```(?:sh|bash)\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```sh\n(.*?)```", text, re.S).group(1)
    assert [ln.split("#")[0].strip() for ln in first_block.strip().splitlines()] == ["make demo", "make test"]
    assert "exec make test" in (ROOT / ".ci" / "run").read_text()


def test_every_readme_command_exists():
    commands = _commands()
    assert len(commands) > 15
    parser = cli.build_parser()
    makefile = (ROOT / "Makefile").read_text()
    checked = 0
    for line in commands:
        words = shlex.split(line)
        if words[0] == "fraudctl":
            args = parser.parse_args(words[1:])
            assert callable(args.func), line
        elif words[0] == "make":
            assert re.search(rf"^{re.escape(words[1])}:", makefile, re.M), line
        elif words[0].endswith("python") and words[1] == "-m":
            assert importlib.util.find_spec(words[2]) is not None, line
        elif words[0].endswith("python"):
            assert (ROOT / words[1]).is_file(), line
        else:
            raise AssertionError(f"README command of an unknown kind: {line}")
        checked += 1
    assert checked == len(commands)
