"""Every bus name, object path, interface, error name and polkit action id.

This is the one place these strings live (firewalld's config/dbus.py, bleak's
defs.py). Clients import it too: it is part of the public contract.
"""

from __future__ import annotations

import functools

TYPE_CHECKING = False  # opctl imports this module: no typing at run time; mypy reads True
if TYPE_CHECKING:
    from typing import Final

BUS_NAME: Final = "org.opdbus"
ROOT_PATH: Final = "/org/opdbus"
JOB_PATH_PREFIX: Final = "/org/opdbus/job"
BRIDGE_PATH_PREFIX: Final = "/org/opdbus/bridge"
VM_PATH_PREFIX: Final = "/org/opdbus/vm"
CONTAINER_PATH_PREFIX: Final = "/org/opdbus/container"
UNIT_PATH_PREFIX: Final = "/org/opdbus/unit"
# Job targets (not objects): one sync and one rebuild at a time.
SYNC_TARGET: Final = "/org/opdbus/sync"
REBUILD_TARGET: Final = "/org/opdbus/rebuild"
# Install and MigrateHostSettings write the same configuration files: one at a time.
INSTALL_TARGET: Final = "/org/opdbus/install"
# The declarative state's object; also the target every state job holds.
STATE_PATH: Final = "/org/opdbus/state"
STATE_TARGET: Final = STATE_PATH

MANAGER_IFACE: Final = "org.opdbus.Manager1"
JOB_IFACE: Final = "org.opdbus.Job1"
BRIDGE_IFACE: Final = "org.opdbus.Bridge1"
VM_IFACE: Final = "org.opdbus.VM1"
CONTAINER_IFACE: Final = "org.opdbus.Container1"
UNIT_IFACE: Final = "org.opdbus.Unit1"
STATE_IFACE: Final = "org.opdbus.State1"
# The original op-dbus's interface, served beside State1 for its users.
STATE_MANAGER_IFACE: Final = "org.opdbus.StateManager"

PROPERTIES_IFACE: Final = "org.freedesktop.DBus.Properties"
OBJECT_MANAGER_IFACE: Final = "org.freedesktop.DBus.ObjectManager"
INTROSPECTABLE_IFACE: Final = "org.freedesktop.DBus.Introspectable"
PEER_IFACE: Final = "org.freedesktop.DBus.Peer"

DBUS_NAME: Final = "org.freedesktop.DBus"
DBUS_PATH: Final = "/org/freedesktop/DBus"
DBUS_IFACE: Final = "org.freedesktop.DBus"

POLKIT_NAME: Final = "org.freedesktop.PolicyKit1"
POLKIT_PATH: Final = "/org/freedesktop/PolicyKit1/Authority"
POLKIT_IFACE: Final = "org.freedesktop.PolicyKit1.Authority"

ERROR_PREFIX: Final = "org.opdbus.Error."

# Environment variable clients read for the bus address (after --bus).
BUS_ADDRESS_ENV: Final = "OPDBUS_BUS_ADDRESS"


class Action:
    """Polkit action ids, one per verb; each is declared in dbus-policy/org.opdbus.policy."""

    VALIDATE: Final = "org.opdbus.host.validate"
    JOB_CANCEL: Final = "org.opdbus.job.cancel"
    BRIDGE_CREATE: Final = "org.opdbus.bridge.create"
    BRIDGE_DELETE: Final = "org.opdbus.bridge.delete"
    BRIDGE_APPLY: Final = "org.opdbus.bridge.apply"
    BRIDGE_PORT: Final = "org.opdbus.bridge.port"
    BRIDGE_ADDRESS: Final = "org.opdbus.bridge.address"
    VM_CREATE: Final = "org.opdbus.vm.create"
    VM_LIFECYCLE: Final = "org.opdbus.vm.lifecycle"
    VM_CONFIGURE: Final = "org.opdbus.vm.configure"
    VM_SNAPSHOT: Final = "org.opdbus.vm.snapshot"
    VM_DELETE: Final = "org.opdbus.vm.delete"
    CONTAINER_CREATE: Final = "org.opdbus.container.create"
    CONTAINER_LIFECYCLE: Final = "org.opdbus.container.lifecycle"
    CONTAINER_CONFIGURE: Final = "org.opdbus.container.configure"
    CONTAINER_EXEC: Final = "org.opdbus.container.exec"
    CONTAINER_DELETE: Final = "org.opdbus.container.delete"
    SYNC: Final = "org.opdbus.host.sync"
    REBUILD: Final = "org.opdbus.host.rebuild"
    UPDATE: Final = "org.opdbus.host.update"
    MIGRATE: Final = "org.opdbus.host.migrate"
    INSTALL: Final = "org.opdbus.host.install"
    AUDIT_SEAL: Final = "org.opdbus.audit.seal"
    STATE_APPLY: Final = "org.opdbus.state.apply"
    STATE_CONFIRM: Final = "org.opdbus.state.confirm"


def job_path(job_id: int) -> str:
    return f"{JOB_PATH_PREFIX}/{job_id}"


def job_id_from_path(path: str) -> int | None:
    """The job number in a job object path, or None if the path is not a job's."""
    prefix = JOB_PATH_PREFIX + "/"
    if not path.startswith(prefix):
        return None
    tail = path[len(prefix) :]
    if not tail.isdigit() or (len(tail) > 1 and tail[0] == "0"):
        return None
    return int(tail)


def bridge_path(name: str) -> str:
    return f"{BRIDGE_PATH_PREFIX}/{escape_path_element(name)}"


def vm_path(uuid: str) -> str:
    return f"{VM_PATH_PREFIX}/{escape_path_element(uuid)}"


def vm_name_target(name: str) -> str:
    """A job target for a VM's name (held while a VM of that name is being made)."""
    return f"{VM_PATH_PREFIX}_name/{escape_path_element(name)}"


def container_path(name: str) -> str:
    return f"{CONTAINER_PATH_PREFIX}/{escape_path_element(name)}"


def unit_path(name: str) -> str:
    return f"{UNIT_PATH_PREFIX}/{escape_path_element(name)}"


_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
# One entry per byte value: itself when a letter or digit, else _xx.
_ESCAPED = tuple(chr(b) if b in _PLAIN else f"_{b:02x}" for b in range(256))


@functools.lru_cache(maxsize=16384)
def escape_path_element(text: str) -> str:
    """Escape any string into one valid object path element, reversibly.

    libvirt-dbus style: ASCII letters and digits stay, every other byte of the
    UTF-8 encoding becomes ``_xx`` (lower-case hex). The empty string is ``_``.
    Cached: every object a job or an apply names is escaped again and again.
    """
    if not text:
        return "_"
    return "".join([_ESCAPED[byte] for byte in text.encode()])


def unescape_path_element(element: str) -> str:
    """Invert :func:`escape_path_element`; raises ValueError on a malformed element."""
    if element == "_":
        return ""
    raw = bytearray()
    i = 0
    while i < len(element):
        char = element[i]
        if char == "_":
            pair = element[i + 1 : i + 3]
            if len(pair) != 2:
                raise ValueError(f"truncated escape in path element {element!r}")
            raw.append(int(pair, 16))
            i += 3
        else:
            raw.extend(char.encode())
            i += 1
    return raw.decode()
