"""The desired-state document: both forms, named errors, committed schemas, the plan's pure diff."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opdbus.errors import InvalidArgs
from opdbus.models.state import SECTIONS, parse_state, section_schema

SCHEMAS = Path(__file__).resolve().parents[2] / "daemon" / "opdbus" / "state-schema"


@pytest.mark.parametrize("provider", list(SECTIONS))
def test_the_committed_schemas_are_the_models(provider: str) -> None:
    committed = json.loads((SCHEMAS / f"{provider}.json").read_text())
    assert committed == section_schema(provider), (
        f"regenerate: opctl state schema {provider} > daemon/opdbus/state-schema/{provider}.json"
    )


def test_both_forms_read_the_same() -> None:
    section = {"net": {"interfaces": [{"name": "br0", "type": "ovs-bridge", "ports": ["eth0"]}]}}
    bare = parse_state(json.dumps(section))
    wrapped = parse_state(json.dumps({"version": 1, "plugins": section}))
    assert bare == wrapped and bare.digest() == wrapped.digest()
    seed_ids = parse_state(json.dumps({"lxc": {"containers": [{"id": "100", "name": "gw"}]}}))
    assert seed_ids.lxc is not None and seed_ids.lxc.containers[0].id == 100


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"dns": {}}, r"dns: unknown provider \(known: systemd, net, lxc, vms\)"),
        ({"version": 1, "plugins": {"dns": {}}}, "plugins.dns: unknown provider"),
        ({"version": 1, "plugins": {}, "x": 1}, "x: unknown field"),
        (
            {"lxc": {"containers": [{"id": 1, "name": "a"}, {"id": 2, "name": "b", "bridge": 3}]}},
            r"lxc.containers\[1\].bridge",
        ),
        (
            {"lxc": {"containers": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}},
            "container id 1 is listed twice",
        ),
        (
            {"net": {"interfaces": [{"name": "a", "ports": ["p"]}, {"name": "b", "ports": ["p"]}]}},
            "port p is listed twice",
        ),
        ({"systemd": {"units": {"nope": {}}}}, "is not a unit name"),
        (
            {"vms": {"domains": [{"profile": {"name": "v", "cpus": 0}}]}},
            r"vms.domains\[0\].profile.cpus",
        ),
    ],
)
def test_bad_documents_name_the_json_path(document: object, message: str) -> None:
    with pytest.raises(InvalidArgs, match=message):
        parse_state(json.dumps(document))


def test_the_providers_compare_is_pure_and_knows_what_is_not_managed() -> None:
    """ipv4 left out is not managed; a bare port name is a plain system port; exact
    (restoring) also counts ports the bridge has beyond the wanted ones."""
    from opdbus.models.network import PortSpec, PortType, SeedAddress, SeedInterface, SeedIpv4
    from opdbus.models.state import LxcContainer
    from opdbus.services.providers.lxc import LxcProvider
    from opdbus.services.providers.net import NetProvider

    net = NetProvider.__new__(NetProvider)  # compare touches no service
    have = SeedInterface(
        name="br0",
        ports=["eth0", PortSpec(name="vi100", type=PortType.INTERNAL)],
        ipv4=SeedIpv4(address=[SeedAddress(ip="10.0.0.1", prefix=24)]),
    )
    assert net.compare(SeedInterface(name="br0", ports=[PortSpec(name="eth0")]), have) == []
    assert net.compare(SeedInterface(name="br0", ipv4=SeedIpv4(enabled=False)), have) == [
        ("ipv4", {"addresses": ["10.0.0.1/24"], "gateway": None}, {"enabled": False})
    ]
    assert net.compare(SeedInterface(name="br0", ports=["eth0"]), have, exact=True) == [
        ("ports[vi100]", {"name": "vi100", "type": "internal"}, None)
    ]
    lxc = LxcProvider.__new__(LxcProvider)
    want = LxcContainer(id=100, name="gw", bridge="mesh")  # veth defaults to vi100
    assert lxc.compare(want, LxcContainer(id=100, name="gw", bridge="mesh", veth="vi100")) == []
    assert lxc.compare(
        want.model_copy(update={"running": True}), LxcContainer(id=100, name="gw", bridge="mesh",
                                                                running=False)
    ) == [("running", False, True)]  # fmt: skip
