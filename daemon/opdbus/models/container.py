"""LXC containers: what a caller may ask for, and what the bus shows.

The op-dbus seed's containers (gateway, warp, xray-client) have ids 100-102
and a veth ``vi<id>`` on the OVS bridge ``mesh``; the Phoenix plan starts them
in id order. Names become directory names under the lxcpath and the
container's hostname, so they are kept to what both accept.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from opdbus.models.base import Model
from opdbus.models.network import Cidr, IfName, Ipv4
from opdbus.models.vm import Mac

NAME_MAX = 63  # a hostname label
ID_MIN, ID_MAX = 1, 999_999_999
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def _check_name(name: str) -> str:
    if not name:
        raise ValueError("a container name cannot be empty")
    if len(name) > NAME_MAX:
        raise ValueError(f"a container name has at most {NAME_MAX} characters")
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"{name!r}: use letters, digits, '_' and '-', starting with a letter or digit "
            "(no '/', '.', spaces or quotes)"
        )
    return name


ContainerName = Annotated[str, AfterValidator(_check_name)]
ContainerId = Annotated[int, Field(ge=ID_MIN, le=ID_MAX)]


class Template(StrEnum):
    BUSYBOX = "busybox"  # offline: built from the host's busybox
    DOWNLOAD = "download"  # images from lxc.download_server (needs a mirror)


class ContainerState(StrEnum):
    """LXC's states, as the bus shows them."""

    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    ABORTING = "aborting"
    FREEZING = "freezing"
    FROZEN = "frozen"
    THAWED = "thawed"


class _Strict(Model):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CreateContainerOptions(_Strict):
    id: ContainerId | None = None  # default: the lowest free id from 100
    template: Template = Template.BUSYBOX
    distribution: str = "debian"  # for the download template
    release: str = "bookworm"
    bridge: IfName | None = None  # an OVS or Linux bridge; None: no network
    veth: IfName | None = None  # host-side name; default vi<id>
    hwaddr: Mac | None = None
    ipv4: list[Cidr] = Field(default_factory=list, max_length=16)
    gateway: Ipv4 | None = None
    memory_mb: Annotated[int, Field(ge=16, le=16 * 1024 * 1024)] | None = None
    cpus: Annotated[int, Field(ge=1, le=1024)] | None = None
    autostart: bool = False
    start: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> CreateContainerOptions:
        if self.bridge is None and (self.veth or self.hwaddr or self.ipv4 or self.gateway):
            raise ValueError("veth, hwaddr, ipv4 and gateway need a bridge")
        if self.gateway and self.ipv4:
            gateway = ipaddress.IPv4Address(self.gateway)
            if not any(gateway in ipaddress.IPv4Interface(a).network for a in self.ipv4):
                raise ValueError(f"gateway {self.gateway} is on none of the ipv4 networks")
        elif self.gateway:
            raise ValueError("a gateway needs an ipv4 address")
        return self


class ContainerSpec(CreateContainerOptions):
    """CreateContainer's name and options, checked together."""

    name: ContainerName


class StopOptions(_Strict):
    timeout: Annotated[float, Field(gt=0, le=3600)] | None = None  # default from config
    force: bool = False  # kill at once (lxc-stop -k) instead of a clean halt


class DeleteContainerOptions(_Strict):
    force: bool = False  # stop it first when it runs


class ExecOptions(_Strict):
    timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0


class ContainerMeta(_Strict):
    """What op-dbus remembers of a container it made (opdbus.json beside its config)."""

    id: ContainerId
    template: str
    ipv4: list[Cidr] = Field(default_factory=list)
    gateway: Ipv4 | None = None
    owner: str = ""  # "state": made by the declarative state (only those are pruned)


class ContainerInfo(Model):
    """What the daemon knows of one container (kept current by lxc-monitor events)."""

    model_config = ConfigDict(frozen=True)

    name: str
    id: int = 0  # 0: not made by op-dbus and no lxc.start.order
    state: ContainerState = ContainerState.STOPPED
    pid: int = 0
    template: str = ""
    bridge: str = ""
    veth: str = ""
    ipv4: tuple[str, ...] = ()  # what it really has (lxc-info), not what was asked
    memory_limit: int = 0  # bytes; 0: none
    cpus: int = 0  # 0: no limit
    autostart: bool = False
    memory_used: int = 0  # bytes
    cpu_time_ns: int = 0
    # What op-dbus configured (its note beside the config), not on the bus.
    ipv4_config: tuple[str, ...] = ()
    gateway: str = ""
    owner: str = ""
