"""The worker's private faust datadir goes with its process (it used to pile up in /tmp)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_the_private_datadir_is_removed_when_the_process_exits():
    made = subprocess.run(
        [
            sys.executable,
            "-c",
            "from streaminfer.streams.app import _private_datadir; p = _private_datadir(); "
            "open(p + '/table.db', 'w').write('x'); print(p)",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    assert made and "streaminfer-worker-" in made
    assert not Path(made).exists()
