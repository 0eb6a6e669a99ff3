import time

import pytest

from shared.clock import parse_time, to_iso
from shared.errors import ConfigError
from shared.ids import id_time_ms, new_id
from shared.settings import Settings


def test_ids_sort_by_time_and_are_unique():
    a = new_id("run", now_ms=1_700_000_000_000)
    b = new_id("run", now_ms=1_700_000_000_001)
    assert a.startswith("run_") and len(a) == 30
    assert a < b
    assert id_time_ms(a) == 1_700_000_000_000
    assert len({new_id("run") for _ in range(10_000)}) == 10_000


def test_time_round_trip():
    assert to_iso(1_795_337_119_023) == "2026-11-22T08:45:19.023Z"
    assert parse_time("2026-11-22T08:45:19.023Z") == 1_795_337_119_023
    assert parse_time("2026-11-22T09:45:19.023+01:00") == 1_795_337_119_023
    assert parse_time("1795337119023") == 1_795_337_119_023
    assert to_iso(None) is None
    with pytest.raises(ValueError):
        parse_time("yesterday")


def test_settings_from_env_and_validation():
    s = Settings.from_env({"LOOPDECK_HEARTBEAT_INTERVAL": "2", "LOOPDECK_STALL_AFTER": "10"})
    assert (s.heartbeat_interval, s.stall_after, s.stall_after_ms) == (2.0, 10.0, 10_000)
    assert s.reaper_interval == 2.5
    assert Settings.from_env({}).reaper_interval == 30.0
    with pytest.raises(ConfigError, match="LOOPDECK_STALL_AFTER"):
        Settings.from_env({"LOOPDECK_HEARTBEAT_INTERVAL": "10", "LOOPDECK_STALL_AFTER": "15"})
    with pytest.raises(ConfigError, match="not a number"):
        Settings.from_env({"LOOPDECK_POLL_INTERVAL": "soon"})
    with pytest.raises(ConfigError, match="NORMAL or FULL"):
        Settings.from_env({"LOOPDECK_SQLITE_SYNCHRONOUS": "OFF"})


def test_host_clock_is_close_to_ids():
    assert abs(id_time_ms(new_id("x")) - time.time() * 1000) < 1000


def test_ids_of_one_process_sort_in_the_order_they_were_made():
    # Many per millisecond: without the monotonic step their random parts would decide.
    made = [new_id("run") for _ in range(5000)]
    assert made == sorted(made) and len(set(made)) == 5000
