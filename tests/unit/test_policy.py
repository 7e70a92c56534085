"""The bus policy, the polkit actions and the daemon's own marks must agree."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from opdbus.bus.base import MethodPolicy, method_policies
from opdbus.bus.bridge import Bridge1
from opdbus.bus.container import Container1
from opdbus.bus.job import Job1
from opdbus.bus.manager import Manager1
from opdbus.bus.state import State1, StateManager
from opdbus.bus.vm import VM1
from opdbus.names import BUS_NAME
from tests.support import REPO

INTERFACES = (Manager1, Job1, Bridge1, VM1, Container1, State1, StateManager)


def policies() -> dict[tuple[str, str], MethodPolicy]:
    out: dict[tuple[str, str], MethodPolicy] = {}
    for cls in INTERFACES:
        for member, policy in method_policies(cls).items():
            assert policy is not None, f"{cls.INTERFACE}.{member} is not declared with @bus_method"
            out[(cls.INTERFACE, member)] = policy
    return out


def bus_policy() -> ET.Element:
    return ET.parse(REPO / "dbus-policy" / "org.opdbus.conf").getroot()


def test_only_root_may_own_the_name() -> None:
    owners = [
        policy.attrib
        for policy in bus_policy().iter("policy")
        for allow in policy.iter("allow")
        if allow.attrib.get("own") == BUS_NAME
    ]
    assert owners == [{"user": "root"}]


def test_everyone_may_call_exactly_the_read_only_methods() -> None:
    default = next(p for p in bus_policy().iter("policy") if p.attrib.get("context") == "default")
    allowed = {
        (rule.attrib["send_interface"], rule.attrib["send_member"])
        for rule in default.iter("allow")
        if rule.attrib.get("send_destination") == BUS_NAME
        and rule.attrib.get("send_interface", "").startswith("org.opdbus.")
    }
    read_only = {key for key, policy in policies().items() if policy.read_only}
    assert allowed == read_only
    assert not any("send_type" in rule.attrib for rule in default.iter("allow"))


def test_every_mutating_method_has_a_declared_polkit_action() -> None:
    declared = {
        action.attrib["id"]
        for action in ET.parse(REPO / "dbus-policy" / "org.opdbus.policy").getroot().iter("action")
    }
    used = {policy.action for policy in policies().values() if not policy.read_only}
    assert None not in used
    assert used == declared


def test_admin_group_may_call_anything() -> None:
    group = next(p for p in bus_policy().iter("policy") if p.attrib.get("group") == "opdbus")
    assert [rule.attrib for rule in group.iter("allow")] == [{"send_destination": BUS_NAME}]
