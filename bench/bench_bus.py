"""Bus overhead of op-dbusd vs a minimal dbus-fast echo service, same bus, same run.

- p50 latency of Properties.Get Version, sequential: target <= 1.3x the echo service
- throughput with 64 calls in flight:               target >= 0.8x the echo service
- p50 latency of a change: VM1.SetAutostart (authorized, then the libvirt
  test driver's domain changed, then its audit entry durable) vs the echo
  service's Append (one JSON line written and fsync'd):  target <= 1.5x

Both services run as their own processes; one client measures both, in
alternating rounds, so machine noise hits both alike.
"""

from __future__ import annotations

import asyncio
import time

from dbus_fast import Message, MessageType, Variant

from common import environment, median, report, start_echo, start_opdbusd
from opdbus.bus.transport import FlowControlledBus

ROUNDS = 10
CHANGES = 200  # mutating calls per round, per service
SEQUENTIAL = 500  # calls per round, per service
CONCURRENT = 8000  # calls per round, per service
IN_FLIGHT = 64

TARGETS = {
    "op-dbusd": ("org.opdbus", "/org/opdbus", "org.opdbus.Manager1"),
    "echo": ("org.opdbus.BenchEcho", "/org/opdbus/BenchEcho", "org.opdbus.BenchEcho1"),
}


def get_version(dest: str, path: str, iface: str) -> Message:
    return Message(
        destination=dest,
        path=path,
        interface="org.freedesktop.DBus.Properties",
        member="Get",
        signature="ss",
        body=[iface, "Version"],
    )


async def latencies(bus: FlowControlledBus, target: tuple[str, str, str]) -> list[float]:
    out = []
    for _ in range(SEQUENTIAL):
        started = time.perf_counter()
        reply = await bus.call(get_version(*target))
        out.append(time.perf_counter() - started)
        assert reply.body[0].value == "0.1.0", reply.body
    return out


async def throughput(bus: FlowControlledBus, target: tuple[str, str, str]) -> float:
    remaining = CONCURRENT

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            reply = await bus.call(get_version(*target))
            assert reply.body[0].value == "0.1.0"

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return CONCURRENT / (time.perf_counter() - started)


def change(target: tuple[str, str, str], i: int) -> Message:
    dest, path, iface = target
    if dest == "org.opdbus":
        body: list[object] = [i % 2 == 0]
        return Message(destination=dest, path=path, interface=iface, member="SetAutostart",
                       signature="b", body=body)  # fmt: skip
    return Message(destination=dest, path=path, interface=iface, member="Append", signature="s",
                   body=[f"SetAutostart {i % 2 == 0}"])  # fmt: skip


async def change_latencies(bus: FlowControlledBus, target: tuple[str, str, str]) -> list[float]:
    out = []
    for i in range(CHANGES):
        started = time.perf_counter()
        reply = await bus.call(change(target, i))
        out.append(time.perf_counter() - started)
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    return out


async def vm_target(bus: FlowControlledBus) -> tuple[str, str, str]:
    """The libvirt test driver's own domain, as op-dbusd shows it."""
    reply = await bus.call(
        Message(destination="org.opdbus", path="/org/opdbus",
                interface="org.freedesktop.DBus.ObjectManager", member="GetManagedObjects")
    )  # fmt: skip
    for path, ifaces in reply.body[0].items():
        vm = ifaces.get("org.opdbus.VM1")
        if vm and isinstance(vm["Name"], Variant) and vm["Name"].value == "test":
            return ("org.opdbus", path, "org.opdbus.VM1")
    raise SystemExit("the test driver's domain is not on the bus")


async def measure_changes(bus: FlowControlledBus) -> None:
    targets = {"op-dbusd": await vm_target(bus), "echo": TARGETS["echo"]}
    for target in targets.values():
        await change_latencies(bus, target)  # warm up both
    ratios: list[float] = []
    p50: dict[str, list[float]] = {name: [] for name in targets}
    for round_ in range(ROUNDS):
        order = list(targets) if round_ % 2 == 0 else list(reversed(targets))
        this: dict[str, float] = {}
        for name in order:
            this[name] = median(await change_latencies(bus, targets[name]))
            p50[name].append(this[name])
        ratios.append(this["op-dbusd"] / this["echo"])
    ratio = median(ratios)
    report(
        "p50 latency of a change, VM1.SetAutostart vs an fsync'd Append",
        ratio,
        "<= 1.5x",
        ratio <= 1.5,
        f"op-dbusd {median(p50['op-dbusd']) * 1e6:.0f} us, dbus-fast echo "
        f"{median(p50['echo']) * 1e6:.0f} us; "
        f"per-round ratios {min(ratios):.2f}-{max(ratios):.2f}",
    )


async def measure(address: str) -> None:
    bus = await FlowControlledBus(address).connect()
    await measure_changes(bus)
    for target in TARGETS.values():  # warm up both
        await latencies(bus, target)
    # Each round measures both services back to back (alternating which goes
    # first) and yields one ratio; the median of the ratios resists the noise
    # of a 2-core machine shared by client, bus daemon and service.
    lat_ratios: list[float] = []
    rate_ratios: list[float] = []
    p50: dict[str, list[float]] = {name: [] for name in TARGETS}
    rates: dict[str, list[float]] = {name: [] for name in TARGETS}
    for round_ in range(ROUNDS):
        order = list(TARGETS) if round_ % 2 == 0 else list(reversed(TARGETS))
        this_p50: dict[str, float] = {}
        this_rate: dict[str, float] = {}
        for name in order:
            this_p50[name] = median(await latencies(bus, TARGETS[name]))
            this_rate[name] = await throughput(bus, TARGETS[name])
            p50[name].append(this_p50[name])
            rates[name].append(this_rate[name])
        lat_ratios.append(this_p50["op-dbusd"] / this_p50["echo"])
        rate_ratios.append(this_rate["op-dbusd"] / this_rate["echo"])
    bus.disconnect()

    ratio = median(lat_ratios)
    report(
        "p50 latency, Properties.Get Version",
        ratio,
        "<= 1.3x",
        ratio <= 1.3,
        f"op-dbusd {median(p50['op-dbusd']) * 1e6:.0f} us, dbus-fast echo "
        f"{median(p50['echo']) * 1e6:.0f} us; "
        f"per-round ratios {min(lat_ratios):.2f}-{max(lat_ratios):.2f}",
    )
    ratio = median(rate_ratios)
    report(
        f"throughput, {IN_FLIGHT} in flight",
        ratio,
        ">= 0.8x",
        ratio >= 0.8,
        f"op-dbusd {median(rates['op-dbusd']):.0f} calls/s, dbus-fast echo "
        f"{median(rates['echo']):.0f} calls/s; "
        f"per-round ratios {min(rate_ratios):.2f}-{max(rate_ratios):.2f}",
    )


def main() -> None:
    with environment() as (bus, workdir):
        daemon = start_opdbusd(bus, workdir, libvirt={"uri": "test:///default"})
        echo = start_echo(bus, workdir)
        try:
            asyncio.run(measure(bus.address))
        finally:
            daemon.stop()
            echo.stop()


if __name__ == "__main__":
    main()
