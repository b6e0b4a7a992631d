"""The background-task thread shared by the leader, the revealer, retention and the probe."""

from __future__ import annotations

import threading
import time

import pytest

from mpcagg.servers.periodic import Periodic


def test_it_calls_the_task_again_after_a_failing_call(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[float] = []
    third = threading.Event()

    def task() -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("one bad round")
        if len(calls) == 3:
            third.set()

    ticker = Periodic("t", 0.01, task, first_wait=0.0)
    ticker.start()
    try:
        assert third.wait(5), f"the task ran {len(calls)} times in 5 s"
    finally:
        ticker.stop()
    assert "background task t failed" in caplog.text
    assert "one bad round" in caplog.text


def test_stop_ends_the_thread_and_no_call_follows() -> None:
    ran = threading.Event()
    count = [0]

    def task() -> None:
        count[0] += 1
        ran.set()

    ticker = Periodic("t", 0.01, task, first_wait=0.0)
    ticker.start()
    assert ran.wait(5)
    ticker.stop()
    after = count[0]
    time.sleep(0.05)
    assert count[0] == after
    assert not any(t.name == "t" for t in threading.enumerate())


def test_the_first_call_waits_first_wait() -> None:
    ran = threading.Event()
    ticker = Periodic("t", 0.01, ran.set, first_wait=30.0)
    ticker.start()
    try:
        assert not ran.wait(0.1)
    finally:
        ticker.stop()


def test_it_starts_once_and_refuses_a_bad_interval() -> None:
    ticker = Periodic("t", 1.0, lambda: None)
    ticker.start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            ticker.start()
    finally:
        ticker.stop()
    with pytest.raises(ValueError, match="interval must be > 0 seconds, got 0"):
        Periodic("t", 0, lambda: None)
