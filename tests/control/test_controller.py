"""The controller lease, the embedded control loop, and its doorbell."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from bitinglip.config import Profile
from bitinglip.control.plane import ControlPlane, open_control_plane
from bitinglip.control.queue.tasks import TaskSpec, TaskState
from bitinglip.control.runtime import controller
from bitinglip.control.runtime.doorbell import Doorbell, ring
from bitinglip.control.runtime.loop import ControlLoop
from bitinglip.control.store.db import open_store


def test_one_controller_at_a_time_and_takeover_on_expiry(profile: Profile) -> None:
    store = open_store(profile.db_path)
    assert controller.try_acquire(store, "a", lease_s=0.3, doorbell=None)
    assert not controller.try_acquire(store, "b", lease_s=0.3, doorbell=None)
    assert controller.try_acquire(store, "a", lease_s=0.3, doorbell=None)  # renewal
    time.sleep(0.35)
    assert controller.try_acquire(store, "b", lease_s=0.3, doorbell=None)
    info = controller.current(store)
    assert info is not None and info.owner == "b" and info.alive


def test_a_dead_local_holder_is_taken_over_at_once(profile: Profile) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    store = open_store(profile.db_path)
    with store.write() as conn:
        conn.execute(
            "INSERT INTO controller (id, owner, pid, hostname, started_at, renewed_at, expires_at)"
            " VALUES (1, 'ghost', ?, ?, 0, ?, ?)",
            (child.pid, os.uname().nodename, time.time(), time.time() + 3600),
        )
    info = controller.current(store)
    assert info is not None and not info.alive
    assert controller.try_acquire(store, "me", lease_s=5, doorbell=None)


def test_embedded_loop_runs_echo_and_releases_the_lease(plane: ControlPlane) -> None:
    with plane.embedded() as loop:
        assert loop is not None
        holder = plane.controller()
        assert holder is not None and holder.owner == loop.owner
        task = plane.wait(plane.submit(TaskSpec(kind="echo", payload={"hello": "world"})), 10)
        assert (task.state, task.result, task.ran_on) == (
            TaskState.SUCCEEDED,
            {"hello": "world"},
            "local",
        )
    assert plane.controller() is None


def test_an_observer_submits_and_the_controller_is_woken(profile: Profile) -> None:
    loop = ControlLoop(profile)
    thread = threading.Thread(target=loop.run)
    thread.start()
    try:
        assert loop.is_controller.wait(5)
        with open_control_plane(profile) as observer:
            with observer.embedded() as embedded:
                assert embedded is None  # a live controller exists: nothing embedded
            start = time.monotonic()
            task = observer.wait(observer.submit(TaskSpec(kind="echo", payload={"n": 1})), 10)
            assert task.state == TaskState.SUCCEEDED
            # Woken by the doorbell, not by the 1 s lease renewal or reaper timers.
            assert time.monotonic() - start < 0.5
    finally:
        loop.stop()
        thread.join(10)
    assert not thread.is_alive()


def test_a_second_loop_waits_as_observer_then_takes_over(
    make_profile: Callable[..., Profile],
) -> None:
    profile = make_profile()
    first, second = ControlLoop(profile), ControlLoop(profile)
    states: list[str] = []
    threads = [
        threading.Thread(target=first.run),
        threading.Thread(target=second.run, kwargs={"on_state": states.append}),
    ]
    threads[0].start()
    assert first.is_controller.wait(5)
    threads[1].start()
    time.sleep(0.3)
    assert not second.is_controller.is_set()
    first.stop()
    threads[0].join(5)
    assert second.is_controller.wait(5) and states == ["controller"]
    second.stop()
    threads[1].join(5)


def test_doorbell_wakes_a_sleeper(profile: Profile) -> None:
    bell = Doorbell(profile.db_path)
    try:
        assert not bell.wait(0.01)
        assert ring(bell.name)
        assert bell.wait(1.0)
        assert not ring("bitinglip-nobody-listens.sock")
    finally:
        bell.close()
