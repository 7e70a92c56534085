"""op-dbusd as a process: readiness, the name, signals, crashes and restarts."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from opdbus.sandbox import PrivateBus
from tests.support import CALM, PYTHON, Opdbusd, base_config, busctl, manager_call, silent_socket


def name_owner(bus: PrivateBus) -> str:
    result = busctl(
        bus.address,
        "call",
        "org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus",
        "NameHasOwner",
        "s",
        "org.opdbus",
    )
    return result.stdout.strip()


def prop(bus: PrivateBus, path: str, name: str) -> str:
    result = busctl(bus.address, "get-property", "org.opdbus", path, "org.opdbus.Job1", name)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def start_full_validation(bus: PrivateBus) -> str:
    result = busctl(
        bus.address,
        "call",
        "org.opdbus",
        "/org/opdbus",
        "org.opdbus.Manager1",
        "Validate",
        "a{sv}",
        "0",
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split('"')[1]


def wait_for(condition: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def verify_audit(bus: PrivateBus) -> str:
    return busctl(
        bus.address, "call", "org.opdbus", "/org/opdbus", "org.opdbus.Manager1", "VerifyAudit"
    ).stdout.strip()


def test_ready_owns_the_name_and_sigterm_exits_0(make_daemon: Any, private_bus: PrivateBus) -> None:
    daemon: Opdbusd = make_daemon(private_bus)  # returns once READY=1 arrived
    assert name_owner(private_bus) == "b true"
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert name_owner(private_bus) == "b false"
    log = daemon.log()
    assert "ready on" in log and "stopped" in log
    # One line per event, each with time, level and logger.
    for line in log.splitlines():
        assert re.match(
            r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) [a-z_.]+: ", line
        ), line


def test_journald_style_lines_under_systemd(private_bus: PrivateBus, tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps(base_config(tmp_path)))
    process = subprocess.Popen(
        [PYTHON, "-m", "opdbus", "--bus", private_bus.address, "--config", str(config)],
        env={**os.environ, "JOURNAL_STREAM": "8:1234"},
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: name_owner(private_bus) == "b true")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=20)
    assert process.returncode == 0
    lines = err.strip().splitlines()
    assert lines and all(re.match(r"^<[0-7]>[a-z_.]+: ", line) for line in lines), lines


def test_a_second_daemon_exits_1_and_names_the_owner(
    make_daemon: Any, private_bus: PrivateBus, tmp_path: Path
) -> None:
    first: Opdbusd = make_daemon(private_bus)
    second: Opdbusd = make_daemon(
        private_bus, base_config(tmp_path / "second"), name="second", start=False
    )
    second.start(wait=False)
    assert second.wait() == 1
    message = second.log().strip().splitlines()[-1]
    assert message.startswith("op-dbusd: org.opdbus is already owned by :1.")
    assert f"(pid {first.pid})" in message and "is another op-dbusd running?" in message
    assert first.process is not None and first.process.poll() is None


@contextlib.contextmanager
def stuck_validation(make_daemon: Any, bus: PrivateBus, tmp: Path) -> Iterator[tuple[Opdbusd, str]]:
    """op-dbusd with a full validation running, held up by a silent "ovsdb-server"."""
    slow = tmp / "silent.sock"
    config = base_config(tmp, ovsdb={"remote": f"unix:{slow}"}, health={"timeout_seconds": 60})
    with silent_socket(slow):
        daemon: Opdbusd = make_daemon(bus, config)
        job = start_full_validation(bus)
        wait_for(lambda: prop(bus, job, "State") == 's "running"')
        yield daemon, job


def test_sigterm_during_a_job_records_it_interrupted(
    make_daemon: Any, private_bus: PrivateBus, tmp_path: Path
) -> None:
    with stuck_validation(make_daemon, private_bus, tmp_path) as (daemon, job):
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
        daemon.start()
    assert prop(private_bus, job, "State") == 's "interrupted"'
    assert prop(private_bus, job, "Result") == 's "interrupted: the daemon stopped"'
    assert verify_audit(private_bus).startswith("bts true 0")


def test_kill_9_during_a_job_then_restart(
    make_daemon: Any, private_bus: PrivateBus, tmp_path: Path
) -> None:
    with stuck_validation(make_daemon, private_bus, tmp_path) as (daemon, job):
        # Records are written after the state changes on the bus: the kill comes
        # once the disk, too, says running (before that, it was queued there).
        record = tmp_path / "state" / "jobs" / f"{job.rsplit('/', 1)[-1]}.json"
        wait_for(lambda: record.exists() and '"state":"running"' in record.read_text())
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait()
        wait_for(lambda: name_owner(private_bus) == "b false")
        daemon.start()
    assert prop(private_bus, job, "State") == 's "interrupted"'
    assert (
        prop(private_bus, job, "Result")
        == 's "interrupted: the daemon stopped while the job was running"'
    )
    log = busctl(
        private_bus.address, "call", "org.opdbus", job, "org.opdbus.Job1", "GetLog", "uu", "1", "0"
    ).stdout
    assert "validating this host (full)" in log
    assert verify_audit(private_bus).startswith("bts true 0")
    entries = manager_call(private_bus.address, "GetAudit", "tu", "1", "10")[0]
    results = [entry["result"]["data"] for entry in entries]
    # One time unit on the bus: µs since the epoch, as t (as Job1's times are).
    assert {entry["time"]["type"] for entry in entries} == {"t"}
    assert abs(entries[0]["time"]["data"] - time.time() * 1_000_000) < 3600 * 1_000_000
    assert results == ["ok", "interrupted: the daemon stopped while the job was running"]
    next_job = start_full_validation(private_bus)
    assert next_job == "/org/opdbus/job/2"  # numbers are never reused


def test_losing_the_bus_exits_1(make_daemon: Any, private_bus: PrivateBus) -> None:
    daemon: Opdbusd = make_daemon(private_bus)
    private_bus.process.kill()
    private_bus.process.wait()
    assert daemon.wait() == 1
    assert "lost the bus connection" in daemon.log()


def test_bad_config_file_exits_2_with_one_line(private_bus: PrivateBus, tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"jobs": {"retention_seconds": "forever"}}))
    result = subprocess.run(
        [PYTHON, "-m", "opdbus", "--bus", private_bus.address, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert (
        result.stderr
        == f"op-dbusd: {config}: jobs.retention_seconds: Input should be a valid number, unable to parse string as a number (got 'forever')\n"
    )
    assert name_owner(private_bus) == "b false"


def test_a_file_where_the_state_dir_wants_a_directory_is_one_line(
    private_bus: PrivateBus, tmp_path: Path
) -> None:
    raw = base_config(tmp_path, **CALM)
    state = Path(raw["state_dir"])
    state.mkdir(parents=True)
    (state / "jobs").write_text("not a directory\n")
    config = tmp_path / "c.json"
    config.write_text(json.dumps(raw))
    result = subprocess.run(
        [PYTHON, "-m", "opdbus", "--bus", private_bus.address, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.endswith(
        f"op-dbusd: {state / 'jobs'} is in the state directory's way: it exists and is not a "
        "directory (move it aside, or set state_dir)\n"
    )
    assert "Traceback" not in result.stderr
    assert name_owner(private_bus) == "b false"
