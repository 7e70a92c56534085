"""What crosses the wire, client side: error names to errors, the bus address, plain values.

Small and free of dbus-fast (imported only inside the functions that need
it), so that the command line's parser and its help never load it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opdbus import errors, names

if TYPE_CHECKING:
    from dbus_fast import DBusError

    from opdbus.models.container import ContainerInfo
    from opdbus.models.job import JobRecord, LogLine
    from opdbus.models.network import BridgeInfo
    from opdbus.models.vm import VmInfo


def no_answer(what: str, path: str, limit: float) -> str:
    """Why opctl gave up on a call (``what``: Interface.Member) after ``limit`` s."""
    return (
        f"no answer to {what} on {path} within {limit:g} s: op-dbusd (or the bus) is not "
        "answering; what it was asked may still happen (`opctl jobs list`, `opctl watch`); "
        "--call-timeout sets how long opctl waits"
    )


class Unreachable(errors.OpdbusError):
    """The bus or the daemon cannot be reached (client side only)."""

    dbus_name = "org.opdbus.Client.Unreachable"
    exit_code = 14


class Detached(Exception):
    """Ctrl-C while a job was followed: the job goes on (``path``: None if unknown yet)."""

    def __init__(self, path: str | None) -> None:
        super().__init__(path)
        self.path = path

    def advice(self) -> str:
        if self.path is None:
            return (
                "opctl: stopped before the daemon answered; "
                "`opctl jobs list --last 1` shows whether the job started"
            )
        job = self.path.rsplit("/", 1)[-1]
        return (
            f"opctl: stopped waiting; job {job} goes on. Follow it with "
            f"`opctl jobs log {job} --follow`, stop it with `opctl jobs cancel {job}`"
        )


class HandOver(Exception):
    """Give this terminal to ``argv`` (virsh console, lxc-attach) once opctl has let go
    of the bus: the process becomes that program (exec), so its exit status is ours."""

    def __init__(self, argv: list[str], install_hint: str) -> None:
        super().__init__(argv)
        self.argv = argv
        self.install_hint = install_hint


_BUS_ERRORS: dict[str, type[errors.OpdbusError]] = {
    "org.freedesktop.DBus.Error.AccessDenied": errors.NotAuthorized,
    "org.freedesktop.DBus.Error.UnknownObject": errors.NotFound,
    "org.freedesktop.DBus.Error.UnknownMethod": errors.NotSupported,
    "org.freedesktop.DBus.Error.UnknownInterface": errors.NotSupported,
    "org.freedesktop.DBus.Error.UnknownProperty": errors.InvalidArgs,
    "org.freedesktop.DBus.Error.PropertyReadOnly": errors.NotSupported,
    "org.freedesktop.DBus.Error.InvalidArgs": errors.InvalidArgs,
    "org.freedesktop.DBus.Error.NoReply": errors.Timeout,
    "org.freedesktop.DBus.Error.Timeout": errors.Timeout,
    "org.freedesktop.DBus.Error.LimitsExceeded": errors.Busy,
}


# dbus-daemon's own words when its policy refuses a call ("Rejected send
# message, 0 matched rules; type=... (uid=1001 ...) interface="..." member="...").
_REJECTED = re.compile(r'\(uid=(\d+).*?interface="([^"]*)" member="([^"]*)"')


def _refusal(text: str) -> str:
    """What was refused and who may do it, instead of the bus's rule dump."""
    found = _REJECTED.search(text)
    what = f"{found.group(2)}.{found.group(3)}" if found else "this call"
    who = f" (you are uid {found.group(1)})" if found else ""
    return (
        f"{what} is refused by the bus policy{who}: only root and members of op-dbusd's admin "
        "group (auth.admin_group, default opdbus) may change things; ask an administrator "
        "to add you"
    )


def map_error(error: DBusError) -> errors.OpdbusError:
    name = error.type
    if name.startswith(names.ERROR_PREFIX):
        return errors.from_dbus_name(name, error.text)
    if name in (
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NameHasNoOwner",
    ):
        return Unreachable(f"op-dbusd is not running on this bus ({names.BUS_NAME} has no owner)")
    if name == "org.freedesktop.DBus.Error.AccessDenied":
        return errors.NotAuthorized(_refusal(error.text or ""))
    return _BUS_ERRORS.get(name, errors.Failed)(error.text or name)


def resolve_address(explicit: str | None) -> str:
    """--bus ADDRESS, then $OPDBUS_BUS_ADDRESS, then the system bus."""
    if explicit:
        return explicit
    from_env = os.environ.get(names.BUS_ADDRESS_ENV)
    if from_env:
        return from_env
    from dbus_fast import BusType
    from dbus_fast._private.address import get_bus_address

    return get_bus_address(BusType.SYSTEM)


def plain(value: Any) -> Any:
    """A reply's value without Variants (as JSON would have it)."""
    from dbus_fast import Variant

    def walk(value: Any) -> Any:
        if isinstance(value, Variant):
            return walk(value.value)
        if isinstance(value, dict):
            return {key: walk(item) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    return walk(value)


def job_ref_to_path(ref: str) -> str:
    """``12``, ``/org/opdbus/job/12`` -> the job's object path."""
    if ref.isdigit():
        return names.job_path(int(ref))
    if names.job_id_from_path(ref) is not None:
        return ref
    raise errors.InvalidArgs(f"{ref!r} is not a job number or job path")


@dataclass
class Status:
    version: str
    mode: str
    backends: dict[str, tuple[bool, str]]
    audit_seq: int
    audit_enabled: bool = True
    libvirt_uri: str = ""  # where virsh console reaches the VMs ("": no VMs in this mode)
    lxc_path: str = ""  # where lxc-attach finds the containers


@dataclass
class SignalEvent:
    path: str
    interface: str
    member: str
    args: list[Any]
    arrival: int = 0  # position among everything this connection received


# opctl.convert and with it the models (pydantic) load only in the calls that
# return them: `opctl status` needs none, and building them is most of an import.


def as_job_record(props: dict[str, Any]) -> JobRecord:
    from opctl.convert import job_record

    return job_record(props)


def as_bridge_info(props: dict[str, Any]) -> BridgeInfo:
    from opctl.convert import bridge_info

    return bridge_info(props)


def as_container_info(props: dict[str, Any]) -> ContainerInfo:
    from opctl.convert import container_info

    return container_info(props)


def as_vm_info(props: dict[str, Any]) -> VmInfo:
    from opctl.convert import vm_info

    return vm_info(props)


def as_variants(options: dict[str, Any]) -> dict[str, Any]:
    from opctl.convert import to_variants

    return to_variants(options)


def as_log_line(number: int, stamp: int, text: str) -> LogLine:
    from opdbus.models.job import LogLine

    return LogLine(number, stamp, text)
