"""The answers generic D-Bus clients depend on, given before dbus-fast's own.

What the D-Bus specification names gets its standard name, so busctl, gdbus
and GLib's proxies behave as with any service: an object that is not there
is org.freedesktop.DBus.Error.UnknownObject, likewise UnknownInterface,
UnknownMethod, UnknownProperty and PropertyReadOnly -- each with a message a
person can act on. Wrong argument types are op-dbus's own InvalidArgs,
naming the signature the method takes. ``Peer.GetMachineId`` is answered
here (dbus-fast forwarded it to the bus driver), and ObjectManager exists
only at /org/opdbus.
"""

from __future__ import annotations

from collections.abc import Mapping

from dbus_fast import Message, MessageFlag, MessageType

from opdbus import names
from opdbus.bus.base import OpdbusInterface, dbus_methods, dbus_properties
from opdbus.bus.transport import FlowControlledBus
from opdbus.errors import InvalidArgs

DBUS_ERROR = "org.freedesktop.DBus.Error."
UNKNOWN_OBJECT = DBUS_ERROR + "UnknownObject"
UNKNOWN_INTERFACE = DBUS_ERROR + "UnknownInterface"
UNKNOWN_METHOD = DBUS_ERROR + "UnknownMethod"
UNKNOWN_PROPERTY = DBUS_ERROR + "UnknownProperty"
PROPERTY_READ_ONLY = DBUS_ERROR + "PropertyReadOnly"

Answer = tuple[str, str]  # (error name, message)

_STANDARD = frozenset(
    {
        names.PROPERTIES_IFACE,
        names.INTROSPECTABLE_IFACE,
        names.PEER_IFACE,
        names.OBJECT_MANAGER_IFACE,
    }
)


class CallGuard:
    def __init__(self, bus: FlowControlledBus, machine_id: str = "") -> None:
        self._bus = bus
        self._machine_id = machine_id
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
        peer = msg.interface == names.PEER_IFACE and msg.member == "GetMachineId"
        if peer and self._machine_id and not msg.signature:
            return Message.new_method_return(msg, "s", [self._machine_id])
        error = self._check(msg)
        if error is None:
            return None
        if msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            return True  # handled: nobody wants to hear about it
        return Message.new_error(msg, *error)

    def _check(self, msg: Message) -> Answer | None:
        path, interface, member = msg.path or "", msg.interface, msg.member or ""
        exported = self._bus._path_exports.get(path)
        if interface == names.PROPERTIES_IFACE:
            if exported is None:
                return UNKNOWN_OBJECT, f"no object at {path}{_hint(path)}"
            return self._check_property(msg, path, exported)
        if interface == names.OBJECT_MANAGER_IFACE and path != names.ROOT_PATH:
            if exported is None:
                return UNKNOWN_OBJECT, f"no object at {path}{_hint(path)}"
            return UNKNOWN_INTERFACE, f"{path} is not an object manager; {names.ROOT_PATH} is"
        if interface in _STANDARD:
            return None
        methods = self._methods.get(interface or "")
        if methods is None:
            if interface is None:
                return None  # no interface given: dbus-fast searches them all
            return UNKNOWN_INTERFACE, f"op-dbus has no interface {interface}"
        if exported is None:
            return UNKNOWN_OBJECT, f"no object at {path}{_hint(path)}"
        if interface not in exported:
            return UNKNOWN_INTERFACE, f"{path} does not implement {interface}"
        signature = methods.get(member)
        if signature is None:
            return UNKNOWN_METHOD, f"{interface} has no method {member}"
        if signature != msg.signature:
            error = InvalidArgs(
                f"{interface}.{member} takes ({signature or 'no arguments'}), "
                f"not ({msg.signature or 'no arguments'})"
            )
            return error.dbus_name, error.message
        return None

    def _check_property(
        self, msg: Message, path: str, exported: Mapping[str, object]
    ) -> Answer | None:
        expected = _PROPERTY_SIGNATURES.get(msg.member or "")
        if expected is None or msg.signature != expected:
            return None  # dbus-fast's own answer to a malformed Properties call
        iface = msg.body[0]
        if iface not in exported:
            return UNKNOWN_INTERFACE, f"{path} does not implement {iface or 'an unnamed interface'}"
        if msg.member == "GetAll":
            return None
        prop = msg.body[1]
        writable = self._properties.get(iface, {}).get(prop)
        if writable is None and iface in self._properties:
            return UNKNOWN_PROPERTY, f"{iface} has no property {prop}"
        if msg.member == "Set" and writable is False:
            return PROPERTY_READ_ONLY, (
                f"{iface}.{prop} is read-only; the methods of {iface} change things"
            )
        return None


_PROPERTY_SIGNATURES = {"Get": "ss", "GetAll": "s", "Set": "ssv"}


def _hint(path: str) -> str:
    if names.job_id_from_path(path) is not None:
        return " (finished jobs are forgotten after the retention time)"
    return ""
