"""opctl as a user runs it: a real process against a real op-dbusd on a real bus."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from opdbus import errors
from opdbus.models.audit import AuditEntry, make_entry
from opdbus.sandbox import PrivateBus, start_private_bus
from tests.support import CALM, PYTHON, Opdbusd, base_config, opctl, run, silent_socket


@pytest.fixture
def calm(make_daemon: Any, private_bus: PrivateBus, tmp_path: Path) -> Opdbusd:
    daemon: Opdbusd = make_daemon(private_bus, base_config(tmp_path, **CALM))
    return daemon


def test_status_table_and_json(daemon: Opdbusd, private_bus: PrivateBus) -> None:
    result = opctl(private_bus.address, "status")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("op-dbusd ") and "mode full" in lines[0]
    assert lines[1].split() == ["BACKEND", "STATE", "DETAIL"]
    assert any(line.split()[:2] == ["dbus", "up"] for line in lines)
    assert lines[-1].startswith("jobs: 0 active, 0 remembered; audit log: 0 entries")
    data = json.loads(opctl(private_bus.address, "--json", "status").stdout)
    assert data["mode"] == "full" and data["backends"]["dbus"]["available"] is True
    assert data["bus"] == private_bus.address and data["audit_seq"] == 0


def test_validate_success_prints_checks_and_exits_0(calm: Opdbusd, private_bus: PrivateBus) -> None:
    result = opctl(private_bus.address, "validate", "--quick")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "validating this host (quick): 6 checks" in out
    assert "[pass] state-dir:" in out
    assert any(line.split()[:2] == ["state-dir", "pass"] for line in out.splitlines())
    assert (
        out.strip()
        .splitlines()[-1]
        .startswith("job 1 succeeded: 4 passed, 0 warnings, 0 failed, 2 skipped")
    )
    assert "\r" not in out + result.stderr  # not a terminal: no progress bar


def test_validate_failure_exits_with_the_jobs_error_kind(
    daemon: Opdbusd, private_bus: PrivateBus
) -> None:
    result = opctl(private_bus.address, "validate")
    assert result.returncode == 1
    assert "[fail] backend-ovsdb: ovsdb-server not reachable" in result.stdout
    assert result.stderr.startswith("job 1 failed: ")
    record = json.loads(opctl(private_bus.address, "--json", "jobs", "show", "1").stdout)
    assert record["state"] == "failed" and record["error"] == "org.opdbus.Error.Failed"
    assert {c["name"]: c["status"] for c in record["output"]["checks"]}["backend-ovsdb"] == "fail"


def test_validate_json_and_no_wait(calm: Opdbusd, private_bus: PrivateBus) -> None:
    data = json.loads(opctl(private_bus.address, "--json", "validate", "--quick").stdout)["job"]
    assert (
        data["state"] == "succeeded"
        and data["operation"] == "Validate"
        and len(data["output"]["checks"]) == 6
    )
    # The --json contract: ISO 8601 UTC times, null for absent, one mutation shape.
    assert data["finished_at"].endswith("Z") and data["error"] is None
    assert datetime.fromisoformat(data["created_at"]) <= datetime.fromisoformat(data["finished_at"])
    started = opctl(private_bus.address, "validate", "--quick", "--no-wait")
    assert started.returncode == 0 and started.stdout.strip() == "/org/opdbus/job/2"
    waited = opctl(private_bus.address, "jobs", "wait", "2")
    assert waited.returncode == 0 and "job 2 succeeded" in waited.stdout
    queued = json.loads(opctl(private_bus.address, "--json", "validate", "--no-wait").stdout)
    assert set(queued) == {"job", "object"} and queued["object"] is None
    assert queued["job"]["path"] == "/org/opdbus/job/3" and queued["job"]["operation"] == "Validate"
    opctl(private_bus.address, "jobs", "wait", "3")
    # Errors under --json: one object on stderr, the kind's exit code.
    missing = opctl(private_bus.address, "--json", "jobs", "show", "99")
    assert missing.returncode == errors.NotFound.exit_code and missing.stdout == ""
    assert json.loads(missing.stderr)["error"] == {
        "name": "org.opdbus.Error.NotFound",
        "kind": "NotFound",
        "message": json.loads(missing.stderr)["error"]["message"],
        "exit_code": errors.NotFound.exit_code,
    }
    assert "99" in json.loads(missing.stderr)["error"]["message"]


def test_jobs_commands(calm: Opdbusd, private_bus: PrivateBus) -> None:
    assert opctl(private_bus.address, "jobs", "list").stdout.strip() == "no jobs"
    opctl(private_bus.address, "validate", "--quick")
    listing = opctl(private_bus.address, "jobs", "list").stdout.splitlines()
    assert listing[0].split() == [
        "ID",
        "STATE",
        "OPERATION",
        "PROGRESS",
        "STARTED",
        "TOOK",
        "RESULT",
    ]
    assert listing[1].split()[:4] == ["1", "succeeded", "Validate", "100%"]
    opctl(private_bus.address, "validate", "--quick")
    newest = opctl(private_bus.address, "--json", "jobs", "list", "--last", "1").stdout
    assert [job["id"] for job in json.loads(newest)] == [2]
    done = opctl(private_bus.address, "--json", "jobs", "list", "--state", "succeeded").stdout
    assert [job["id"] for job in json.loads(done)] == [1, 2]
    running = opctl(private_bus.address, "jobs", "list", "--state", "running").stdout
    assert running.strip() == "no jobs"
    bare = opctl(private_bus.address, "jobs", "list", "--no-headers").stdout.splitlines()
    assert [line.split()[0] for line in bare] == ["1", "2"]
    # -o: these columns, in this order (like nmcli -f).
    picked = opctl(private_bus.address, "jobs", "list", "-o", "state,id").stdout.splitlines()
    assert [line.split() for line in picked] == [
        ["STATE", "ID"],
        ["succeeded", "1"],
        ["succeeded", "2"],
    ]
    unknown = opctl(private_bus.address, "jobs", "list", "-o", "id,colour")
    assert unknown.returncode == errors.InvalidArgs.exit_code
    assert "-o colour: no such column here; the columns are id, state, operation" in unknown.stderr
    version = opctl(private_bus.address, "--version")
    assert version.returncode == 0 and version.stdout.startswith("opctl ")
    show = opctl(private_bus.address, "jobs", "show", "/org/opdbus/job/1").stdout
    assert "operation: Validate" in show and "started by: uid 0" in show
    log = opctl(private_bus.address, "jobs", "log", "1", "--from", "2").stdout.splitlines()
    assert log[0].split()[0] == "2" and "[pass] state-dir" in log[0]
    lines = json.loads(opctl(private_bus.address, "--json", "jobs", "log", "1").stdout)
    assert [line["number"] for line in lines] == list(range(1, 8))
    cancel = opctl(private_bus.address, "jobs", "cancel", "1")
    assert cancel.returncode == 10 and "Conflict: job 1 already succeeded" in cancel.stderr


def test_ctrl_c_leaves_the_job_running_and_says_how_to_follow_it(
    make_daemon: Any, private_bus: PrivateBus, tmp_path: Path
) -> None:
    slow = tmp_path / "silent.sock"  # backend-ovsdb waits on it: the job stays running
    with silent_socket(slow):
        make_daemon(
            private_bus,
            base_config(tmp_path, ovsdb={"remote": f"unix:{slow}"}, health={"timeout_seconds": 60}),
        )
        # stderr is a terminal, so there is a progress bar to watch.
        master, terminal = pty.openpty()
        follower = subprocess.Popen(
            [PYTHON, "-m", "opctl", "--bus", private_bus.address, "validate"],
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
        )
        os.close(terminal)
        drawn = b""
        deadline = time.monotonic() + 30
        while b"running 2s" not in drawn and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                drawn += os.read(master, 4096)
        # Between the job's own events the bar still moves: the time and the spinner.
        assert b"running 1s" in drawn and b"running 2s" in drawn, drawn
        follower.send_signal(signal.SIGINT)
        follower.communicate(timeout=30)
        while select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            drawn += chunk
        os.close(master)
        assert follower.returncode == 130
        assert (
            "stopped waiting; job 1 goes on. Follow it with `opctl jobs log 1 --follow`, "
            "stop it with `opctl jobs cancel 1`" in drawn.decode()
        )
        listed = json.loads(opctl(private_bus.address, "--json", "jobs", "list").stdout)
        assert [(j["id"], j["state"]) for j in listed] == [(1, "running")]
        # --follow prints what `jobs log` prints, then goes on until the end.
        logged = opctl(private_bus.address, "jobs", "log", "1").stdout.splitlines()
        followed = subprocess.Popen(
            [PYTHON, "-m", "opctl", "--bus", private_bus.address, "jobs", "log", "1", "--follow"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1)
        assert opctl(private_bus.address, "jobs", "cancel", "1").returncode == 0
        out, _ = followed.communicate(timeout=30)
    assert followed.returncode == errors.Cancelled.exit_code
    assert out.splitlines()[: len(logged)] == logged and logged, (out, logged)


def test_cancel_a_running_job_from_the_cli(
    make_daemon: Any, private_bus: PrivateBus, tmp_path: Path
) -> None:
    slow = tmp_path / "silent.sock"
    with silent_socket(slow):
        make_daemon(
            private_bus,
            base_config(tmp_path, ovsdb={"remote": f"unix:{slow}"}, health={"timeout_seconds": 60}),
        )
        follower = subprocess.Popen(
            [PYTHON, "-m", "opctl", "--bus", private_bus.address, "validate"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(200):
            if json.loads(opctl(private_bus.address, "--json", "jobs", "list").stdout or "[]"):
                break
            time.sleep(0.05)
        time.sleep(0.3)
        cancel = opctl(private_bus.address, "jobs", "cancel", "1")
        assert cancel.returncode == 0 and cancel.stdout.strip() == "job 1 cancelled"
        out, err = follower.communicate(timeout=30)
    assert follower.returncode == 11  # the validating opctl saw its job cancelled
    assert "job 1 cancelled: cancelled by uid 0" in err
    assert "[pass] state-dir" in out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["jobs", "show", "99"], 7, "opctl: NotFound: no object at /org/opdbus/job/99"),
        (
            ["jobs", "show", "ninety"],
            4,
            "opctl: InvalidArgs: 'ninety' is not a job number or job path",
        ),
        (["jobs", "frobnicate"], 4, "invalid choice: 'frobnicate'"),
        (["validate", "--deep"], 4, "unrecognized arguments: --deep"),
    ],
)
def test_errors_have_distinct_exit_codes(
    daemon: Opdbusd, private_bus: PrivateBus, args: list[str], code: int, message: str
) -> None:
    result = opctl(private_bus.address, *args)
    assert result.returncode == code
    assert message in result.stderr


def test_unreachable_bus_or_daemon(private_bus: PrivateBus, tmp_path: Path) -> None:
    result = opctl(f"unix:path={tmp_path}/nothing.sock", "status")
    assert result.returncode == 14
    assert result.stderr.startswith(
        f"opctl: Unreachable: cannot connect to the bus at unix:path={tmp_path}/nothing.sock"
    )
    result = opctl(private_bus.address, "status")
    assert result.returncode == 14
    assert "op-dbusd is not running on this bus (org.opdbus has no owner)" in result.stderr


def test_a_daemon_that_stops_answering_is_a_timeout_naming_the_call(
    daemon: Opdbusd, private_bus: PrivateBus
) -> None:
    assert daemon.process is not None
    os.kill(daemon.process.pid, signal.SIGSTOP)  # our own op-dbusd: hung, its name still owned
    try:
        started = time.monotonic()
        result = opctl(private_bus.address, "--call-timeout", "1", "net", "bridge", "list")
        assert result.returncode == 12, result.stderr
        assert time.monotonic() - started < 15
        assert result.stderr.startswith("opctl: Timeout: no answer to ")
        assert "within 1 s: op-dbusd (or the bus) is not answering" in result.stderr
        result = run(
            [PYTHON, "-m", "opctl", "--bus", private_bus.address, "status"],
            env={"OPDBUS_CALL_TIMEOUT": "0.5", "PATH": "/usr/bin:/bin"},
        )
        assert result.returncode == 12 and "within 0.5 s" in result.stderr
        result = run(
            [PYTHON, "-m", "opctl", "--bus", private_bus.address, "status"],
            env={"OPDBUS_CALL_TIMEOUT": "soon", "PATH": "/usr/bin:/bin"},
        )
        assert result.returncode == 4
        assert "$OPDBUS_CALL_TIMEOUT=soon: 'soon' is not a number of seconds" in result.stderr
    finally:
        os.kill(daemon.process.pid, signal.SIGCONT)
    assert opctl(private_bus.address, "status").returncode == 0


def test_bus_from_the_environment(daemon: Opdbusd, private_bus: PrivateBus) -> None:
    result = run(
        [PYTHON, "-m", "opctl", "--json", "status"],
        env={"OPDBUS_BUS_ADDRESS": private_bus.address, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0 and json.loads(result.stdout)["bus"] == private_bus.address


def test_audit_list_and_verify_catches_tampering(calm: Opdbusd, private_bus: PrivateBus) -> None:
    opctl(private_bus.address, "validate", "--quick")
    opctl(private_bus.address, "validate", "--quick")
    listing = opctl(private_bus.address, "audit", "list").stdout.splitlines()
    assert listing[0].split()[:6] == ["SEQ", "TIME", "USER", "KIND", "METHOD", "OBJECT"]
    assert [line.split()[0] for line in listing[1:]] == ["1", "2", "3", "4"]
    # People's names: the user, the interface without its prefix, the object by name.
    assert listing[1].split()[3:7] == ["root", "call", "Manager1.Validate", "op-dbusd"]
    entries = json.loads(
        opctl(private_bus.address, "--json", "audit", "list", "--last", "2").stdout
    )
    assert [e["seq"] for e in entries] == [3, 4]
    assert all(e["time"].endswith("Z") for e in entries)
    ok = opctl(private_bus.address, "audit", "verify")
    assert ok.returncode == 0 and ok.stdout.strip() == "audit log intact: 4 entries, chain intact"
    log = calm.state_dir / "audit" / "audit.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace('"uid":0', '"uid":1000')
    log.write_text("".join(lines))
    bad = opctl(private_bus.address, "audit", "verify")
    assert bad.returncode == 1
    assert bad.stderr.splitlines() == [
        "audit log BROKEN:",
        "  - entry 2 was altered: its hash does not match its content",
    ]
    data = json.loads(opctl(private_bus.address, "--json", "audit", "verify").stdout)
    assert data == {
        "ok": False,
        "entries": 4,
        "first_bad_seq": 2,
        "problems": ["entry 2 was altered: its hash does not match its content"],
        "verified_with_key": False,
    }


def test_audit_sealing_proves_what_was_sealed(calm: Opdbusd, private_bus: PrivateBus) -> None:
    """seal-init shows the key once; verify --key (over the bus, or a copied file) proves the
    sealed entries and names a rewrite that keeps the plain chain intact."""
    init = opctl(private_bus.address, "audit", "seal-init", "--epoch", "1")
    assert init.returncode == 0, init.stderr
    key = init.stdout.strip()
    assert key.startswith("opdbus-seal-v1:") and "not be shown again" in init.stderr
    again = opctl(private_bus.address, "audit", "seal-init")
    assert again.returncode == 10 and "already on" in again.stderr  # Conflict
    opctl(private_bus.address, "validate", "--quick")
    time.sleep(2.2)  # two epochs end: two seals
    ok = opctl(private_bus.address, "audit", "verify", "--key", key)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("audit log intact: ") and "seals prove entries 1-" in ok.stdout
    assert key.split(":")[1] not in (calm.state_dir / "audit" / "seal.key").read_text()
    copy = calm.state_dir.parent / "copy.jsonl"
    log = calm.state_dir / "audit" / "audit.jsonl"
    copy.write_bytes(log.read_bytes())
    offline = run(
        [PYTHON, "-m", "opctl", "--json", "audit", "verify", "--file", str(copy), "--key", key]
    )
    report = json.loads(offline.stdout)
    assert offline.returncode == 0 and report["ok"] and report["sealed_through"] >= 3
    # A root attacker rewrites entry 2 and re-chains everything after it.
    entries = [AuditEntry.model_validate_json(line) for line in copy.read_text().splitlines()]
    forged, prev = [], entries[0].prev_hash
    for entry in entries:
        fields = {k: v for k, v in entry.body().items() if k not in ("seq", "prev_hash")}
        if entry.seq == 2:
            fields["result"] = "error: org.opdbus.Error.NotAuthorized"
        forged.append(make_entry(entry.seq, prev, **fields))
        prev = forged[-1].hash
    copy.write_text("".join(e.model_dump_json() + "\n" for e in forged))
    plain = run([PYTHON, "-m", "opctl", "audit", "verify", "--file", str(copy)])
    assert plain.returncode == 0  # the bare chain cannot tell...
    sealed = run([PYTHON, "-m", "opctl", "audit", "verify", "--file", str(copy), "--key", key])
    assert sealed.returncode == 1 and "does not verify" in sealed.stderr  # ...the seals can


def test_watch_prints_every_signal_and_stops_cleanly(
    calm: Opdbusd, private_bus: PrivateBus
) -> None:
    watcher = subprocess.Popen(
        [PYTHON, "-m", "opctl", "--bus", private_bus.address, "--json", "watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)  # let it subscribe
        opctl(private_bus.address, "validate", "--quick")
        time.sleep(0.5)
    finally:
        watcher.send_signal(signal.SIGINT)
        out, err = watcher.communicate(timeout=20)
    assert watcher.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    members = [(e["path"], e["member"]) for e in events]
    assert ("/org/opdbus", "JobNew") in members
    assert ("/org/opdbus/job/1", "Completed") in members
    assert sum(1 for m in members if m == ("/org/opdbus/job/1", "Log")) == 7
    assert members.index(("/org/opdbus", "JobNew")) < members.index(
        ("/org/opdbus/job/1", "Completed")
    )


def test_watch_for_people_names_objects_and_survives_the_bus_going_away(
    make_daemon: Any, private_bus: PrivateBus, tmp_path: Path
) -> None:
    daemon = make_daemon(private_bus, base_config(tmp_path))
    notes_file = tmp_path / "watch.err"  # read while it runs
    with notes_file.open("w") as notes_out:
        watcher = subprocess.Popen(
            [PYTHON, "-m", "opctl", "--bus", private_bus.address, "watch"],
            stdout=subprocess.PIPE,
            stderr=notes_out,
            text=True,
        )
    again = None
    try:
        time.sleep(1.0)  # let it subscribe
        opctl(private_bus.address, "validate", "--quick")
        daemon.stop()  # op-dbusd leaves the bus: said on stderr
        time.sleep(0.5)
        private_bus.stop()  # the bus itself goes away
        time.sleep(1.0)
        again = start_private_bus(tmp_path / "bus")  # the same socket: it connects again
        deadline = time.monotonic() + 20
        while "connected again" not in notes_file.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        watcher.send_signal(signal.SIGINT)
        out, _ = watcher.communicate(timeout=20)
        if again is not None:
            again.stop()
    err = notes_file.read_text()
    assert watcher.returncode == 0, err
    lines = [line.split(" ", 1)[1] for line in out.splitlines()]
    # Objects by the names people use, not escaped object paths (virsh event's style).
    assert "job 1 (Validate) added" in lines
    assert "job 1 (Validate): [pass] state-dir: " in "\n".join(lines)
    assert any(line.startswith("job 1 (Validate) completed: succeeded: ") for line in lines)
    assert "job 1 (Validate) ended: succeeded" in lines, "\n".join(lines)
    notes = [line.split(" ", 1)[1] for line in err.splitlines()]
    assert notes[0].startswith("watching org.opdbus on ")
    assert "op-dbusd left the bus" in notes
    assert any(
        n.startswith("the bus at ") and n.endswith("went away; connecting again…") for n in notes
    )
    assert "connected again (events while away are lost)" in notes, notes


def test_progress_bar_on_a_terminal_only(
    make_daemon: Any, private_bus: PrivateBus, tmp_path: Path
) -> None:
    slow = tmp_path / "silent.sock"  # the ovsdb probe waits 1 s: long enough to draw a bar
    with silent_socket(slow):
        make_daemon(
            private_bus,
            base_config(tmp_path, ovsdb={"remote": f"unix:{slow}"}, health={"timeout_seconds": 1}),
        )
        command = f"{PYTHON} -m opctl --bus '{private_bus.address}' validate"

        def on_a_terminal(cmd: str) -> tuple[int, str]:
            # Bytes, not text: universal newlines would turn the bar's \r into \n.
            done = subprocess.run(
                ["script", "-qec", cmd, "/dev/null"], capture_output=True, timeout=60, check=False
            )
            return done.returncode, done.stdout.decode()

        code, screen = on_a_terminal(command)
        quiet_code, quiet_screen = on_a_terminal(command + " --no-progress")
    assert code == 1  # ovsdb "did not answer"
    assert "\r[" in screen and "% Validate (job 1) running" in screen
    assert "[fail] backend-ovsdb: ovsdb-server at unix:" in screen
    assert quiet_code == 1 and "\r[" not in quiet_screen and "[fail] backend-ovsdb" in quiet_screen


def test_help_reads_well() -> None:
    result = run([PYTHON, "-m", "opctl", "--help"])
    assert result.returncode == 0
    for text in (
        "status",
        "validate",
        "jobs",
        "audit",
        "watch",
        "exit codes:",
        "14  daemon or bus unreachable",
        "$OPDBUS_BUS_ADDRESS",
    ):
        assert text in result.stdout
    sub = run([PYTHON, "-m", "opctl", "validate", "--help"])
    assert "--fix" in sub.stdout and "repair what is safe to repair" in sub.stdout


@pytest.mark.parametrize(
    ("bus", "code", "line"),
    [
        ("garbage", 4, "opctl: InvalidArgs: 'garbage' is not a D-Bus address"),
        ("unix:path=/nonexistent/bus", 14, "opctl: Unreachable: cannot connect to the bus"),
    ],
)
def test_a_bad_bus_is_one_line_and_an_exit_code_never_a_traceback(
    bus: str, code: int, line: str
) -> None:
    done = run([PYTHON, "-m", "opctl", "--bus", bus, "status"])
    assert done.returncode == code, done.stderr
    assert done.stderr.startswith(line) and len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


def test_a_reader_that_goes_away_is_not_a_traceback() -> None:
    """`opctl vm profile schema | head -5`: the pipe closes under opctl."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before opctl writes a byte
    try:
        done = subprocess.run(
            [PYTHON, "-m", "opctl", "vm", "profile", "schema"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)
    assert done.returncode == 141  # as a shell reports a tool ended by SIGPIPE
    assert done.stderr == ""


def test_a_backend_that_is_down_is_not_an_empty_list(
    make_daemon: Any, private_bus: PrivateBus
) -> None:
    make_daemon(private_bus)  # full mode; no OVSDB and no libvirtd where the config says
    for args, what in ((["net", "bridge", "list"], "bridges"), (["vm", "list"], "VMs")):
        done = opctl(private_bus.address, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert f"BackendUnavailable: {what} cannot be listed" in done.stderr
        assert done.stdout == ""  # not "no bridges"


def test_a_list_the_mode_does_not_serve_says_so(
    make_daemon: Any, private_bus: PrivateBus, tmp_path: Path
) -> None:
    make_daemon(private_bus, base_config(tmp_path, mode="agent"))
    done = opctl(private_bus.address, "ct", "list")
    assert done.returncode == 13 and "containers are off in agent mode" in done.stderr
