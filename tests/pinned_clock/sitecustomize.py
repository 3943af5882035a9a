"""Pins the wall clock of every Python process a test starts (the service, the demo, the simulator)
to that test's pinned clock: `PINNED_CLOCK_OFFSET_S` seconds from the real time, ticking.

This folder is on PYTHONPATH only when pytest runs with `--clock` (tests/conftest.py), and the
variable is set only while a test runs, so nothing else is touched.
"""

import os

_offset = os.environ.get("PINNED_CLOCK_OFFSET_S")
if _offset:
    import time

    import time_machine

    time_machine.travel(time.time() + float(_offset), tick=True).start()
