"""Named errors where dbus-fast would answer with generic ones.

dbus-fast replies to a call on a missing object, a missing member or a wrong
signature with org.freedesktop.DBus.Error.* texts. Every error op-dbus sends
is an org.opdbus.Error.*, so this message handler answers those cases first:
no object -> NotFound, no such method -> NotSupported, wrong argument types
-> InvalidArgs (naming the signature the method takes).
"""

from __future__ import annotations

from collections.abc import Mapping

from dbus_fast import Message, MessageFlag, MessageType

from opdbus import names
from opdbus.bus.base import OpdbusInterface, dbus_methods, dbus_properties
from opdbus.bus.transport import FlowControlledBus
from opdbus.errors import InvalidArgs, NotFound, NotSupported, OpdbusError

_STANDARD = frozenset(
    {
        names.PROPERTIES_IFACE,
        names.INTROSPECTABLE_IFACE,
        names.PEER_IFACE,
        names.OBJECT_MANAGER_IFACE,
    }
)


class CallGuard:
    def __init__(self, bus: FlowControlledBus) -> None:
        self._bus = bus
        self._methods: dict[str, dict[str, str]] = {}  # interface -> method -> in signature
        self._properties: dict[str, dict[str, bool]] = {}  # interface -> property -> writable

    def learn(self, interface: type[OpdbusInterface]) -> None:
        self._methods[interface.INTERFACE] = {
            name: method.in_signature for name, method in dbus_methods(interface).items()
        }
        self._properties[interface.INTERFACE] = dbus_properties(interface)

    def __call__(self, msg: Message) -> Message | bool | None:
        if msg.message_type is not MessageType.METHOD_CALL:
            return None
        error = self._check(msg)
        if error is None:
            return None
        if msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            return True  # handled: nobody wants to hear about it
        return Message.new_error(msg, error.dbus_name, error.message)

    def _check(self, msg: Message) -> OpdbusError | None:
        path, interface, member = msg.path or "", msg.interface, msg.member or ""
        exported = self._bus._path_exports.get(path)
        if interface == names.PROPERTIES_IFACE:
            if exported is None:
                return NotFound(f"no object at {path}{_hint(path)}")
            return self._check_property(msg, path, exported)
        if interface in _STANDARD:
            return None
        methods = self._methods.get(interface or "")
        if methods is None:
            if interface is None:
                return None  # no interface given: dbus-fast searches them all
            return NotSupported(f"op-dbus has no interface {interface}")
        if exported is None:
            return NotFound(f"no object at {path}{_hint(path)}")
        if interface not in exported:
            return NotSupported(f"{path} does not implement {interface}")
        signature = methods.get(member)
        if signature is None:
            return NotSupported(f"{interface} has no method {member}")
        if signature != msg.signature:
            return InvalidArgs(
                f"{interface}.{member} takes ({signature or 'no arguments'}), "
                f"not ({msg.signature or 'no arguments'})"
            )
        return None

    def _check_property(
        self, msg: Message, path: str, exported: Mapping[str, object]
    ) -> OpdbusError | None:
        expected = _PROPERTY_SIGNATURES.get(msg.member or "")
        if expected is None or msg.signature != expected:
            return None  # dbus-fast's own answer to a malformed Properties call
        iface = msg.body[0]
        if iface not in exported:
            return NotSupported(f"{path} does not implement {iface or 'an unnamed interface'}")
        if msg.member == "GetAll":
            return None
        prop = msg.body[1]
        writable = self._properties.get(iface, {}).get(prop)
        if writable is None and iface in self._properties:
            return InvalidArgs(f"{iface} has no property {prop}")
        if msg.member == "Set" and writable is False:
            return NotSupported(
                f"{iface}.{prop} is read-only; the methods of {iface} change things"
            )
        return None


_PROPERTY_SIGNATURES = {"Get": "ss", "GetAll": "s", "Set": "ssv"}


def _hint(path: str) -> str:
    if names.job_id_from_path(path) is not None:
        return " (finished jobs are forgotten after the retention time)"
    return ""
