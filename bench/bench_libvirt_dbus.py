"""Changes to VMs through op-dbusd vs libvirt-dbus, on one private bus, against one libvirtd.

The peer is Debian's libvirt-dbus (apt `libvirt-dbus`, 1.4.1). It connects to
fixed URIs only (qemu:///system on the system bus), so it runs in a mount
namespace of its own: /run there is a tmpfs whose libvirt/libvirt-sock is the
private libvirtd's socket (bind-mounted), and DBUS_SYSTEM_BUS_ADDRESS points it
at the private bus. Both daemons therefore drive the same libvirtd + QEMU, and
one client library (dbus-fast) calls both.

- A property-setting change: VM1.SetAutostart(b) vs Properties.Set of
  org.libvirt.Domain.Autostart on the same domain:             p50 target <= 1.5x
- Defining a VM: Manager1.CreateVM returning its job path vs
  org.libvirt.Connect.DomainDefineXML returning the domain:    p50 target <= 2x

op-dbusd does more per change by design: authorization, an audit entry made
durable (fsync) before the answer, and for CreateVM a job record. Rounds
alternate between the two; medians are compared.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import libvirt
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from common import median, report, start_opdbusd
from opdbus import names
from opdbus.sandbox import start_private_bus, user_grant
from tests.libvirtd import TEST_PREFIX, PrivateLibvirtd, start_private_libvirtd

LIBVIRT = "org.libvirt"
CONNECT = "/org/libvirt/QEMU"
CONNECT_IFACE = "org.libvirt.Connect"
DOMAIN = "org.libvirt.Domain"
PROPERTIES = "org.freedesktop.DBus.Properties"
AUTOSTART_CALLS = 200
DEFINE_ROUNDS = 30


def start_libvirt_dbus(address: str, libvirt_socket: Path, log: Path) -> subprocess.Popen[bytes]:
    """libvirt-dbus --system in its own mount namespace, its qemu:///system being ours."""
    script = (
        "set -e; mount -t tmpfs tmpfs /run; mkdir /run/libvirt; "
        "touch /run/libvirt/libvirt-sock; "
        f"mount --bind {libvirt_socket} /run/libvirt/libvirt-sock; "
        "exec libvirt-dbus --system"
    )
    return subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": address},
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
    )


class Bus:
    """One dbus-fast connection calling both daemons."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus

    async def call(
        self, dest: str, path: str, iface: str, member: str, sig: str = "", *body: Any
    ) -> list[Any]:
        message = Message(
            destination=dest, path=path, interface=iface, member=member, signature=sig,
            body=list(body),
        )  # fmt: skip
        reply = await self.bus.call(message)
        assert reply is not None
        if reply.message_type is MessageType.ERROR:
            raise RuntimeError(f"{member}: {reply.error_name}: {reply.body}")
        return list(reply.body)

    async def ours(self, path: str, iface: str, member: str, sig: str = "", *body: Any) -> Any:
        return await self.call(names.BUS_NAME, path, iface, member, sig, *body)

    async def theirs(self, path: str, iface: str, member: str, sig: str = "", *body: Any) -> Any:
        return await self.call(LIBVIRT, path, iface, member, sig, *body)

    async def wait_owned(self, name: str) -> None:
        for _ in range(200):
            (owned,) = await self.call(
                "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                "NameHasOwner", "s", name,
            )  # fmt: skip
            if owned:
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{name} was not owned in time")


def domain_xml(name: str) -> str:
    dom = ET.Element("domain", type="kvm" if os.path.exists("/dev/kvm") else "qemu")
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "memory", unit="MiB").text = "64"
    ET.SubElement(dom, "vcpu").text = "1"
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64").text = "hvm"
    return ET.tostring(dom, encoding="unicode")


async def timed(call: Awaitable[Any]) -> float:
    started = time.perf_counter()
    await call
    return time.perf_counter() - started


async def autostart(bus: Bus, ours: str, theirs: str) -> tuple[float, float]:
    mine: list[float] = []
    peer: list[float] = []
    for i in range(AUTOSTART_CALLS):
        on = i % 2 == 0
        mine.append(await timed(bus.ours(ours, names.VM_IFACE, "SetAutostart", "b", on)))
        peer.append(
            await timed(
                bus.theirs(theirs, PROPERTIES, "Set", "ssv", DOMAIN, "Autostart", Variant("b", on))
            )
        )
    return median(mine), median(peer)


async def wait_job(bus: Bus, path: str) -> None:
    for _ in range(600):
        (state,) = await bus.ours(path, PROPERTIES, "Get", "ss", names.JOB_IFACE, "State")
        if state.value not in ("queued", "running"):
            assert state.value == "succeeded", path
            return
        await asyncio.sleep(0.02)
    raise RuntimeError(f"{path} did not end")


def undefine(conn: libvirt.virConnect, name: str) -> None:
    conn.lookupByName(name).undefine()


async def define(bus: Bus, conn: libvirt.virConnect) -> tuple[float, float]:
    mine: list[float] = []
    peer: list[float] = []
    for i in range(DEFINE_ROUNDS):
        ours, theirs = f"{TEST_PREFIX}ours-{i}", f"{TEST_PREFIX}theirs-{i}"
        profile = json.dumps({"name": ours, "cpus": 1, "memory_mb": 64})
        started = time.perf_counter()
        (job,) = await bus.ours(
            names.ROOT_PATH, names.MANAGER_IFACE, "CreateVM", "sa{sv}", profile, {}
        )
        mine.append(time.perf_counter() - started)
        await wait_job(bus, str(job))  # not timed: the define itself happens in the job
        xml = domain_xml(theirs)
        peer.append(await timed(bus.theirs(CONNECT, CONNECT_IFACE, "DomainDefineXML", "s", xml)))
        for name in (ours, theirs):
            await asyncio.to_thread(undefine, conn, name)
    return median(mine), median(peer)


async def measure(address: str, conn: libvirt.virConnect) -> None:
    bus = Bus(await MessageBus(bus_address=address).connect())
    try:
        await bus.wait_owned(LIBVIRT)
        name = f"{TEST_PREFIX}autostart"
        dom = await asyncio.to_thread(conn.defineXML, domain_xml(name))
        ours = names.vm_path(dom.UUIDString())
        for _ in range(100):  # op-dbusd hears of it by libvirt's event
            try:
                await bus.ours(ours, PROPERTIES, "Get", "ss", names.VM_IFACE, "Name")
                break
            except RuntimeError:
                await asyncio.sleep(0.05)
        (theirs,) = await bus.theirs(CONNECT, CONNECT_IFACE, "DomainLookupByName", "s", name)
        await autostart(bus, ours, str(theirs))  # warm-up, uncounted
        mine, peer = await autostart(bus, ours, str(theirs))
        report(
            "VM1.SetAutostart vs libvirt-dbus Properties.Set Autostart",
            mine / peer,
            "<= 1.5x",
            mine / peer <= 1.5,
            f"op-dbusd {mine * 1e6:.0f} us, libvirt-dbus {peer * 1e6:.0f} us, "
            f"p50 of {AUTOSTART_CALLS}",
        )
        mine, peer = await define(bus, conn)
        report(
            "Manager1.CreateVM (to its job path) vs libvirt-dbus DomainDefineXML",
            mine / peer,
            "<= 2x",
            mine / peer <= 2,
            f"op-dbusd {mine * 1e3:.2f} ms, libvirt-dbus {peer * 1e3:.2f} ms, "
            f"p50 of {DEFINE_ROUNDS}",
        )
    finally:
        bus.bus.disconnect()


def main() -> None:
    if shutil.which("libvirt-dbus") is None:
        raise SystemExit("bench_libvirt_dbus needs libvirt-dbus (Debian: apt install libvirt-dbus)")
    if os.geteuid() != 0:
        raise SystemExit("bench_libvirt_dbus needs root (a mount namespace for libvirt-dbus)")
    libvirtd: PrivateLibvirtd = start_private_libvirtd()
    try:
        libvirtd.cleanup()
        conn = libvirt.open(libvirtd.uri)
        with tempfile.TemporaryDirectory(prefix="opdbus-bench-") as tmp:
            workdir = Path(tmp)
            grant = {"libvirt.conf": user_grant("root", LIBVIRT)}
            bus = start_private_bus(workdir / "bus", policy_files=grant)
            peer = start_libvirt_dbus(bus.address, libvirtd.socket, workdir / "libvirt-dbus.log")
            daemon = start_opdbusd(
                bus, workdir, libvirt={"uri": libvirtd.uri, "pool_dir": str(workdir / "pool")}
            )
            try:
                asyncio.run(measure(bus.address, conn))
            finally:
                daemon.stop()
                peer.terminate()
                peer.wait(timeout=10)
                bus.stop()
        conn.close()
    finally:
        libvirtd.cleanup()
        libvirtd.stop()


if __name__ == "__main__":
    main()
