"""The desired-state document: a host as bridges, containers and VMs (and, later, units).

Two forms are read, the original op-dbus's ``{"version": 1, "plugins": {...}}``
and the bare ``{"net": ..., "lxc": ..., "vms": ...}`` that the NixOS option
``stateConfig`` produces; ``Query`` writes the bare form. Each provider's
section is a model here, with its own JSON Schema (``state-schema/``);
unknown providers and fields are InvalidArgs naming the JSON path.

A field left out of a resource is not managed: ``running`` absent means
"leave it as it is". Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from opdbus.errors import InvalidArgs
from opdbus.models.base import Model
from opdbus.models.container import ContainerId, ContainerName, Template
from opdbus.models.document import check_document, parse_json
from opdbus.models.network import (
    BRIDGES_MAX,
    Cidr,
    IfName,
    Ipv4,
    SeedInterface,
    first_duplicate,
)
from opdbus.models.vm import VmProfile

STATE_MAX_BYTES = 4 * 1024 * 1024
RESOURCES_MAX = 4096


class _Strict(Model):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _int_from_text(value: Any) -> Any:
    """The seed writes container ids as strings ("100"); digits become the number."""
    return int(value) if isinstance(value, str) and value.isdigit() else value


# -- net: the seed's interfaces ---------------------------------------------------------


class NetSection(_Strict):
    """Open vSwitch bridges (``type: ovs-bridge``) with their ports and IPv4."""

    interfaces: list[SeedInterface] = Field(default_factory=list, max_length=BRIDGES_MAX)

    @model_validator(mode="after")
    def _unique(self) -> NetSection:
        twice = first_duplicate(item.name for item in self.interfaces)
        if twice is not None:
            raise ValueError(f"interface {twice} is listed twice")
        ports = (
            p if isinstance(p, str) else p.name for item in self.interfaces for p in item.ports
        )
        twice = first_duplicate(ports)
        if twice is not None:
            raise ValueError(f"port {twice} is listed twice")
        return self


# -- lxc ------------------------------------------------------------------------------


class LxcContainer(_Strict):
    id: Annotated[ContainerId, BeforeValidator(_int_from_text)]
    name: ContainerName
    veth: IfName | None = None  # default vi<id> when there is a bridge
    bridge: IfName | None = None
    running: bool | None = None  # None: not managed
    template: Template = Template.BUSYBOX
    ipv4: list[Cidr] = Field(default_factory=list, max_length=16)
    gateway: Ipv4 | None = None
    memory: Annotated[int, Field(ge=16, le=16 * 1024 * 1024)] | None = None  # MiB
    cpus: Annotated[int, Field(ge=1, le=1024)] | None = None
    autostart: bool | None = None  # None: not managed

    @model_validator(mode="after")
    def _consistent(self) -> LxcContainer:
        if self.bridge is None and (self.veth or self.ipv4 or self.gateway):
            raise ValueError("veth, ipv4 and gateway need a bridge")
        if self.gateway and not self.ipv4:
            raise ValueError("a gateway needs an ipv4 address")
        return self


class LxcSection(_Strict):
    containers: list[LxcContainer] = Field(default_factory=list, max_length=RESOURCES_MAX)

    @model_validator(mode="after")
    def _unique(self) -> LxcSection:
        for what, values in (
            ("name", (c.name for c in self.containers)),
            ("id", (str(c.id) for c in self.containers)),
            ("veth", (c.veth for c in self.containers if c.veth)),
        ):
            twice = first_duplicate(values)
            if twice is not None:
                raise ValueError(f"container {what} {twice} is listed twice")
        return self


# -- vms --------------------------------------------------------------------------------


class VmDomain(_Strict):
    profile: VmProfile  # what the VM is (its name is the resource's id)
    running: bool | None = None  # None: not managed
    autostart: bool | None = None  # None: the profile's


class VmsSection(_Strict):
    domains: list[VmDomain] = Field(default_factory=list, max_length=RESOURCES_MAX)

    @model_validator(mode="after")
    def _unique(self) -> VmsSection:
        twice = first_duplicate(d.profile.name for d in self.domains)
        if twice is not None:
            raise ValueError(f"domain {twice} is listed twice")
        return self


# -- systemd (its provider comes with the systemd backend) ----------------------------------


class SystemdUnit(_Strict):
    enabled: bool | None = None
    active_state: Literal["active", "inactive"] | None = None
    masked: bool | None = None


def _unit_name(name: str) -> str:
    suffixes = (".service", ".socket", ".timer", ".target", ".mount", ".path")
    if not name.endswith(suffixes) or "/" in name or len(name) > 255:
        raise ValueError(f"{name!r} is not a unit name like openvswitch.service")
    return name


class SystemdSection(_Strict):
    units: dict[Annotated[str, BeforeValidator(_unit_name)], SystemdUnit] = Field(
        default_factory=dict, max_length=RESOURCES_MAX
    )


# -- the document ---------------------------------------------------------------------------

SECTIONS: dict[str, type[BaseModel]] = {
    "systemd": SystemdSection,
    "net": NetSection,
    "lxc": LxcSection,
    "vms": VmsSection,
}


class StateDocument(_Strict):
    """The bare form; ``{"version": 1, "plugins": {...}}`` is read into it too."""

    systemd: SystemdSection | None = None
    net: NetSection | None = None
    lxc: LxcSection | None = None
    vms: VmsSection | None = None

    def sections(self) -> dict[str, BaseModel]:
        return {name: getattr(self, name) for name in SECTIONS if getattr(self, name) is not None}

    def canonical(self) -> bytes:
        """Sorted keys, no spaces, unset fields left out: equal documents, equal bytes."""
        return json.dumps(
            self.model_dump(mode="json", exclude_none=True),
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    def digest(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()


def parse_state(text: str, what: str = "state document") -> StateDocument:
    """Either form, checked; InvalidArgs names every problem by its JSON path."""
    data = parse_json(text, what, max_bytes=STATE_MAX_BYTES)
    if not isinstance(data, dict):
        raise InvalidArgs(f"{what}: must be a JSON object")
    if "plugins" in data or "version" in data:
        version = data.get("version")
        if version != 1:
            raise InvalidArgs(f"{what}: version: only version 1 is understood (got {version!r})")
        extra = sorted(set(data) - {"version", "plugins"})
        if extra:
            raise InvalidArgs(f"{what}: {extra[0]}: unknown field (beside version and plugins)")
        data = data.get("plugins")
        if not isinstance(data, dict):
            raise InvalidArgs(f"{what}: plugins: must be an object of providers")
        where = "plugins."
    else:
        where = ""
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        known = ", ".join(SECTIONS)
        raise InvalidArgs(f"{what}: {where}{unknown[0]}: unknown provider (known: {known})")
    return check_document(StateDocument, data, what)


def section_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of one provider's section (committed under state-schema/)."""
    return SECTIONS[name].model_json_schema()


# -- what a diff says ---------------------------------------------------------------------

Op = Literal["create", "modify", "delete"]


@dataclass(frozen=True)
class Change:
    """One difference between the desired state and the host: Diff's unit."""

    provider: str
    id: str
    op: Op
    field: str = ""  # "" for a whole resource (create, delete)
    before: Any = None
    after: Any = None

    def as_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "id": self.id,
            "op": self.op,
            "field": self.field,
            "from": self.before,
            "to": self.after,
        }


def plan_json(changes: Iterable[Change]) -> str:
    return json.dumps([change.as_json() for change in changes], sort_keys=True)


# -- options of the bus methods ----------------------------------------------------------


class ApplyStateOptions(_Strict):
    dry_run: bool = False  # plan, change nothing
    prune: bool = False  # delete what the state made and the document no longer lists
    confirm_timeout: Annotated[int, Field(ge=0, le=86400)] = 0  # seconds; 0: commit at once
    providers: list[str] = Field(default_factory=list, max_length=len(SECTIONS))
    if_digest: Annotated[str, Field(max_length=64)] = ""  # Conflict if Digest differs


class DiffStateOptions(_Strict):
    prune: bool = False
    providers: list[str] = Field(default_factory=list, max_length=len(SECTIONS))
