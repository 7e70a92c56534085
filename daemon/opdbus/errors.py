"""The error hierarchy: one class per D-Bus error name, one exit code per kind.

Services and backends raise these; the bus adapter turns them into
``DBusError(cls.dbus_name, message)``; clients turn the name back into the
same class and exit with its code. The codes keep the Hyper-NixOS scripts'
meanings where they overlap (1 general, 2 missing dependency, 3 permission
denied, 4 invalid arguments, 5 network/backend failure, 6 configuration).
"""

from __future__ import annotations

from opdbus.names import ERROR_PREFIX

TYPE_CHECKING = False  # opctl imports this module: no typing at run time; mypy reads True
if TYPE_CHECKING:
    from typing import ClassVar


class OpdbusError(Exception):
    """Base of every error that may cross the bus."""

    dbus_name: ClassVar[str] = ERROR_PREFIX + "Failed"
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Failed(OpdbusError):
    """Anything not covered by a more specific kind (also: unexpected internal errors)."""

    dbus_name = ERROR_PREFIX + "Failed"
    exit_code = 1


class BackendUnavailable(OpdbusError):
    """The backend (libvirtd, ovsdb-server, LXC, polkit...) is not reachable."""

    dbus_name = ERROR_PREFIX + "BackendUnavailable"
    exit_code = 2


class NotAuthorized(OpdbusError):
    dbus_name = ERROR_PREFIX + "NotAuthorized"
    exit_code = 3


class InvalidArgs(OpdbusError):
    dbus_name = ERROR_PREFIX + "InvalidArgs"
    exit_code = 4


class BackendFailed(OpdbusError):
    """The backend was reached but refused or failed the operation."""

    dbus_name = ERROR_PREFIX + "BackendFailed"
    exit_code = 5


class NotFound(OpdbusError):
    dbus_name = ERROR_PREFIX + "NotFound"
    exit_code = 7


class AlreadyExists(OpdbusError):
    dbus_name = ERROR_PREFIX + "AlreadyExists"
    exit_code = 8


class Busy(OpdbusError):
    """Another job holds the target; try again when it finishes."""

    dbus_name = ERROR_PREFIX + "Busy"
    exit_code = 9


class Conflict(OpdbusError):
    """The request contradicts the current state (e.g. cancelling a finished job)."""

    dbus_name = ERROR_PREFIX + "Conflict"
    exit_code = 10


class Cancelled(OpdbusError):
    dbus_name = ERROR_PREFIX + "Cancelled"
    exit_code = 11


class Timeout(OpdbusError):
    dbus_name = ERROR_PREFIX + "Timeout"
    exit_code = 12


class NotSupported(OpdbusError):
    """The method's backend is off in the current mode, or the object cannot do it."""

    dbus_name = ERROR_PREFIX + "NotSupported"
    exit_code = 13


ALL_ERRORS: tuple[type[OpdbusError], ...] = (
    Failed,
    BackendUnavailable,
    NotAuthorized,
    InvalidArgs,
    BackendFailed,
    NotFound,
    AlreadyExists,
    Busy,
    Conflict,
    Cancelled,
    Timeout,
    NotSupported,
)

ERRORS_BY_NAME: dict[str, type[OpdbusError]] = {cls.dbus_name: cls for cls in ALL_ERRORS}


def from_dbus_name(name: str, message: str) -> OpdbusError:
    """The error a D-Bus error name stands for; unknown names become Failed."""
    cls = ERRORS_BY_NAME.get(name, Failed)
    return cls(message)
