"""The node console: repeated SuperNode warnings are held back, the ClientApp's lines shown."""

from __future__ import annotations

import time

from node.supernode import Quiet


def test_repeated_warnings_reach_the_console_once_per_interval() -> None:
    shown: list[str] = []
    quiet = Quiet(every_s=0.3)
    for wait in ("3.47", "7.12", "12.9"):  # one warning, whatever its numbers
        quiet.say(f"WARNING :  Connection attempt failed, retrying in {wait} seconds", shown.append)
    quiet.say("ERROR :  something else", shown.append)
    assert shown == [
        "WARNING :  Connection attempt failed, retrying in 3.47 seconds",
        "ERROR :  something else",
    ]
    time.sleep(0.35)
    quiet.say("WARNING :  Connection attempt failed, retrying in 20.1 seconds", shown.append)
    assert shown[-1].endswith("retrying in 20.1 seconds (and 2 more like it in logs/supernode.log)")
