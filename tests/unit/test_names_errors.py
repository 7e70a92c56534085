from __future__ import annotations

import pytest
from dbus_fast import DBusError

from opctl.wire import Unreachable, job_ref_to_path, map_error
from opdbus import errors, names


@pytest.mark.parametrize(
    "text",
    [
        "",
        "vm1",
        "a b",
        "../etc",
        "ünïcode",
        "x/y",
        "_",
        "_2f",
        "550e8400-e29b-41d4-a716-446655440000",
    ],
)
def test_path_escaping_round_trips(text: str) -> None:
    element = names.escape_path_element(text)
    assert element and all(c.isascii() and (c.isalnum() or c == "_") for c in element)
    assert names.unescape_path_element(element) == text


def test_escaping_matches_libvirt_dbus_style() -> None:
    assert names.escape_path_element("a-b") == "a_2db"
    assert names.escape_path_element("ok1") == "ok1"


@pytest.mark.parametrize("bad", ["_4", "_zz"])
def test_unescape_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        names.unescape_path_element(bad)


def test_job_paths() -> None:
    assert names.job_path(7) == "/org/opdbus/job/7"
    assert names.job_id_from_path("/org/opdbus/job/7") == 7
    for bad in (
        "/org/opdbus/job/07",
        "/org/opdbus/job/x",
        "/org/opdbus/jobs/1",
        "/org/opdbus/job/",
    ):
        assert names.job_id_from_path(bad) is None
    assert job_ref_to_path("12") == "/org/opdbus/job/12"
    with pytest.raises(errors.InvalidArgs):
        job_ref_to_path("twelve")


def test_every_error_kind_has_its_own_name_and_exit_code() -> None:
    kinds = errors.ALL_ERRORS
    assert len({kind.dbus_name for kind in kinds}) == len(kinds)
    assert len({kind.exit_code for kind in kinds}) == len(kinds)
    assert all(kind.dbus_name.startswith("org.opdbus.Error.") for kind in kinds)
    assert 0 not in {kind.exit_code for kind in kinds}
    assert Unreachable.exit_code not in {kind.exit_code for kind in kinds}
    wanted = {
        "NotFound",
        "AlreadyExists",
        "InvalidArgs",
        "NotAuthorized",
        "Busy",
        "Conflict",
        "Cancelled",
        "Timeout",
        "BackendUnavailable",
        "BackendFailed",
        "Failed",
        "NotSupported",
    }
    assert {kind.dbus_name.rsplit(".", 1)[1] for kind in kinds} == wanted


def test_names_map_back_to_the_same_classes() -> None:
    for kind in errors.ALL_ERRORS:
        again = errors.from_dbus_name(kind.dbus_name, "why")
        assert type(again) is kind and again.message == "why"
        assert type(map_error(DBusError(kind.dbus_name, "why"))) is kind
    assert type(errors.from_dbus_name("org.example.Weird", "x")) is errors.Failed


def test_bus_errors_map_to_kinds_a_person_can_act_on() -> None:
    assert isinstance(
        map_error(DBusError("org.freedesktop.DBus.Error.AccessDenied", "no")), errors.NotAuthorized
    )
    assert isinstance(
        map_error(DBusError("org.freedesktop.DBus.Error.ServiceUnknown", "x")), Unreachable
    )


def test_the_suite_runs_in_its_own_network_namespace() -> None:
    """A safety net, not a feature: tests must not be able to reach the host's routes."""
    import os

    if os.geteuid() != 0:
        import pytest

        pytest.skip("only root can unshare the network namespace")
    parent = os.getppid()  # make, a shell: still in the host's namespace
    assert os.readlink("/proc/self/ns/net") != os.readlink(f"/proc/{parent}/ns/net")
