"""VMs through op-dbusd vs libvirt-python against the same private libvirtd.

- Listing 1000 defined VMs: GetManagedObjects (what `opctl vm list --json`
  calls) vs `listAllDomains()` + `getAllDomainStats()`:      target <= 1.0x
  and the libvirt RPCs a list costs must not grow with N (counted by
  libvirtd itself, from its RPC log, at N=10 and N=1000).
- Starting one VM (64 MiB, no OS): the Start job until it has succeeded
  (the VM is running) vs `virDomainCreate`:                 target <= 1.1x

Alternating rounds after an uncounted warm-up; medians are compared.
"""

from __future__ import annotations

import asyncio
import os
import time
import xml.etree.ElementTree as ET
from typing import Any

import libvirt

from common import environment, median, report, start_opdbusd
from opctl.client import Client
from opdbus import names
from opdbus.models.job import JobState
from tests.libvirtd import TEST_PREFIX, PrivateLibvirtd, start_private_libvirtd

COUNT = 1000
LIST_ROUNDS = 15
START_ROUNDS = 7


def domain_xml(name: str) -> str:
    dom = ET.Element("domain", type="kvm" if os.path.exists("/dev/kvm") else "qemu")
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "memory", unit="MiB").text = "64"
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="q35").text = "hvm"
    return ET.tostring(dom, encoding="unicode")


def define(conn: libvirt.virConnect, first: int, last: int) -> None:
    for i in range(first, last):
        conn.defineXML(domain_xml(f"{TEST_PREFIX}bench-{i:04d}"))


def raw_list(conn: libvirt.virConnect) -> float:
    started = time.perf_counter()
    domains = conn.listAllDomains(0)
    stats = conn.getAllDomainStats(0, 0)
    took = time.perf_counter() - started
    assert len(domains) >= COUNT and len(stats) == len(domains)
    return took


async def daemon_list(client: Client, expect: int) -> float:
    started = time.perf_counter()
    (objects,) = await client.call(names.ROOT_PATH, names.OBJECT_MANAGER_IFACE, "GetManagedObjects")
    took = time.perf_counter() - started
    assert sum(names.VM_IFACE in ifaces for ifaces in objects.values()) == expect
    return took


async def wait_for_vms(client: Client, count: int) -> None:
    for _ in range(600):
        if len(await client.vms()) == count:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"op-dbusd did not come to list {count} VMs")


async def rpcs_per_list(client: Client, libvirtd: PrivateLibvirtd, lists: int) -> float:
    """libvirt RPCs libvirtd received while op-dbusd answered ``lists`` lists."""
    await asyncio.sleep(0.5)  # let the daemon's own refreshes settle
    before = await asyncio.to_thread(libvirtd.rpc_messages)
    for _ in range(lists):
        await client.call(names.ROOT_PATH, names.OBJECT_MANAGER_IFACE, "GetManagedObjects")
    await asyncio.sleep(0.2)  # libvirtd writes its log asynchronously
    return (await asyncio.to_thread(libvirtd.rpc_messages) - before) / lists


async def daemon_start(client: Client, path: str) -> float:
    started = time.perf_counter()
    record = await client.run_job(lambda: client.vm_job(path, "Start"))
    took = time.perf_counter() - started
    assert record.state is JobState.SUCCEEDED, record.result
    return took


def raw_start(dom: libvirt.virDomain) -> float:
    started = time.perf_counter()
    dom.create()
    took = time.perf_counter() - started
    assert dom.isActive()
    return took


async def wait_state(client: Client, path: str, state: str) -> None:
    for _ in range(200):
        if (await client.get_all(path, names.VM_IFACE))["State"] == state:
            return
        await asyncio.sleep(0.02)
    raise RuntimeError(f"{path} never became {state}")


async def measure(address: str, libvirtd: PrivateLibvirtd, conn: libvirt.virConnect) -> None:
    async with await Client.connect(address) as client:
        define(conn, 0, 10)
        await wait_for_vms(client, 10)
        rpcs_small = await rpcs_per_list(client, libvirtd, 20)
        define(conn, 10, COUNT)
        await wait_for_vms(client, COUNT)
        rpcs_large = await rpcs_per_list(client, libvirtd, 20)

        ours: list[float] = []
        theirs: list[float] = []
        for round_ in range(LIST_ROUNDS + 1):
            a = await daemon_list(client, COUNT)
            b = raw_list(conn)
            if round_:
                ours.append(a)
                theirs.append(b)
        mine, peer = median(ours), median(theirs)
        report(
            f"list {COUNT} VMs via GetManagedObjects vs listAllDomains+getAllDomainStats",
            mine / peer,
            "<= 1.0x",
            mine / peer <= 1.0,
            f"op-dbusd {mine * 1000:.1f} ms, libvirt-python {peer * 1000:.1f} ms",
        )
        flat = rpcs_large <= rpcs_small
        print(
            f"libvirt RPCs per list: {rpcs_small:.2f} at N=10, {rpcs_large:.2f} at N={COUNT} "
            f"(target: no growth with N) {'PASS' if flat else 'MISS'}"
        )

        vms = await client.vms()
        path = next(p for p, props in vms.items() if props["Name"].endswith("bench-0000"))
        dom = conn.lookupByName(f"{TEST_PREFIX}bench-0000")
        ours, theirs = [], []
        for round_ in range(START_ROUNDS + 1):
            a = await daemon_start(client, path)
            dom.destroy()
            await wait_state(client, path, "shutoff")
            b = raw_start(dom)
            # Its events reach the daemon after virDomainCreate returns: wait for
            # them, or the next Start would find the cache one step behind.
            await wait_state(client, path, "running")
            dom.destroy()
            await wait_state(client, path, "shutoff")
            if round_:
                ours.append(a)
                theirs.append(b)
        mine, peer = median(ours), median(theirs)
        report(
            "start one VM via VM1.Start (job done) vs virDomainCreate",
            mine / peer,
            "<= 1.1x",
            mine / peer <= 1.1,
            f"op-dbusd {mine * 1000:.0f} ms, libvirt-python {peer * 1000:.0f} ms",
        )


def main() -> None:
    libvirtd = start_private_libvirtd(log_rpc=True)
    conn: Any = None
    try:
        conn = libvirt.open(libvirtd.uri)
        with environment() as (bus, workdir):
            daemon = start_opdbusd(
                bus, workdir, libvirt={"uri": libvirtd.uri, "pool_dir": str(workdir / "pool")}
            )
            try:
                asyncio.run(measure(bus.address, libvirtd, conn))
            finally:
                daemon.stop()
    finally:
        if conn is not None:
            for dom in conn.listAllDomains(0):
                if dom.name().startswith(TEST_PREFIX):
                    if dom.isActive():
                        dom.destroy()
                    dom.undefine()
            conn.close()
        libvirtd.stop()


if __name__ == "__main__":
    main()
