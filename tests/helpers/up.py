"""Start `streaminfer up` and read the lines it prints once everything serves."""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass, field
from typing import IO


@dataclass
class Up:
    proc: subprocess.Popen
    url: str | None = None
    key: str | None = None
    lines: list[str] = field(default_factory=list)


def start_up(
    argv: list[str], env: dict[str, str], log: IO[str], cwd=None, timeout_s: float = 180
) -> Up:
    """Run ``argv`` (a `streaminfer up` command line) and read stdout until it says Ctrl-C."""
    proc = subprocess.Popen(
        argv,
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        start_new_session=True,
    )
    up = Up(proc)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        line = proc.stdout.readline()
        up.lines.append(line)
        if match := re.match(r"gateway:\s+(http://\S+)", line):
            up.url = match.group(1)
        if match := re.match(r"api key:\s+(\S+)", line):
            up.key = match.group(1)
        if line.startswith("Ctrl-C"):
            break
    return up
