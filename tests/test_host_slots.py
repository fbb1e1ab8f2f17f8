"""Exactly-once transactional id numbers claimed per host (``consumer.host_slots``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from consumer.host_slots import HostSlots


def test_supervisors_on_one_host_take_the_lowest_free_numbers_and_give_them_back(tmp_path: Path) -> None:
    first, second = HostSlots("tfstream", "fraud", tmp_path), HostSlots("tfstream", "fraud", tmp_path)
    assert first.claim(2) == [0, 1] and second.claim(2) == [2, 3]
    assert HostSlots("tfstream", "other/group", tmp_path).claim(1) == [0]
    assert HostSlots("other-prefix", "fraud", tmp_path).claim(1) == [0]
    first.release()
    third = HostSlots("tfstream", "fraud", tmp_path)
    assert third.claim(3) == [0, 1, 4]
    third.release()
    second.release()
    assert len(list(tmp_path.glob("*.lock"))) == 2  # the two single claims not released


def test_a_killed_supervisor_s_numbers_are_free_again(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from consumer.host_slots import HostSlots; "
            f"print(HostSlots('tfstream', 'fraud', Path({str(tmp_path)!r})).claim(1), flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "[0]"
    assert HostSlots("tfstream", "fraud", tmp_path).claim(1) == [1]
    holder.kill()
    holder.wait()
    assert HostSlots("tfstream", "fraud", tmp_path).claim(1) == [0]


def test_the_shared_folder_is_made_writable_for_every_user(tmp_path: Path) -> None:
    slots = HostSlots("tfstream", "fraud", tmp_path / "locks")
    slots.claim(1)
    assert (tmp_path / "locks").stat().st_mode & 0o7777 == 0o1777
