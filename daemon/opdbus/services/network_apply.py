"""ApplyBridges: a whole document of bridges and ports in one OVSDB transaction.

The plan compares the document with the cache and keeps only what differs:
bridges to create, columns to change, ports to add, move or retag. What
exists and matches is left alone, so applying the same document twice
changes nothing. Fields a bridge entry does not mention are not touched, and
ports a bridge has but the document does not list stay (LXC adds its own).

Every forward step has an inverse; if anything fails after the commit (an
interface that ovs-vswitchd cannot open, addresses netlink refuses, a
cancel), the inverses run as one transaction and OVSDB is as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opdbus.backends.ovsdb import commands
from opdbus.backends.ovsdb.client import OvsCache
from opdbus.backends.ovsdb.rows import BridgeRow, PortRow
from opdbus.backends.ovsdb.txn import Txn
from opdbus.errors import NotFound, OpdbusError
from opdbus.models.network import Addressing, BridgesDocument, BridgeSpec, PortSpec, PortType
from opdbus.services.jobs import JobBody, JobContext, JobOutcome
from opdbus.services.network import (
    ADDRESSING_KEYS,
    KEY_OWNER,
    LINK_TIMEOUT,
    RESERVED_PREFIX,
    NetworkService,
    addressing_ids,
    user_ids,
    wanted_addressing,
)

log = logging.getLogger(__name__)

Step = Callable[[Txn], None]
ADDRESSING_FIELDS = {"addresses", "gateway", "dhcp", "mtu"}


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)
    undo: list[Step] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)  # one line per change, for the log
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    addressing: dict[str, Addressing] = field(default_factory=dict)
    new_ports: list[tuple[str, str]] = field(default_factory=list)  # (bridge, port)

    def add(self, text: str, step: Step, undo: Step) -> None:
        self.changes.append(text)
        self.steps.append(step)
        self.undo.append(undo)


def _port_spec(cache: OvsCache, port: PortRow) -> PortSpec:
    """What an existing port is, as a PortSpec (to compare with, and to restore)."""
    ifaces = cache.interfaces_of(port)
    first = ifaces[0] if ifaces else None
    kind = {"": PortType.SYSTEM, "internal": PortType.INTERNAL, "patch": PortType.PATCH}.get(
        first.type if first else "", PortType.SYSTEM
    )
    return PortSpec(
        name=port.name,
        type=kind,
        tag=port.tag,
        trunks=list(port.trunks),
        peer=first.options.get("peer") if first and kind is PortType.PATCH else None,
    )


def make_plan(
    doc: BridgesDocument, cache: OvsCache, default_datapath: str, *, owner: str = ""
) -> Plan:
    plan = Plan()
    for spec in doc.bridges:
        row = cache.bridge(spec.name)
        before = len(plan.steps)
        if row is None:
            _plan_new_bridge(plan, spec, default_datapath, owner)
            plan.created.append(spec.name)
        else:
            _plan_bridge_update(plan, spec, row, cache)
        for port in spec.ports:
            _plan_port(plan, spec.name, port, cache)
        if row is not None:
            (plan.updated if len(plan.steps) > before else plan.unchanged).append(spec.name)
        if spec.model_fields_set & ADDRESSING_FIELDS:
            plan.addressing[spec.name] = Addressing(
                addresses=spec.addresses, gateway=spec.gateway, dhcp=spec.dhcp, mtu=spec.mtu
            )
    return plan


def _plan_new_bridge(plan: Plan, spec: BridgeSpec, default_datapath: str, owner: str) -> None:
    ids = {**user_ids(spec.external_ids), **addressing_ids(spec)}
    if owner:
        ids[KEY_OWNER] = owner
    datapath = spec.datapath_type or default_datapath

    def step(tx: Txn) -> None:
        commands.add_bridge(
            tx,
            spec.name,
            datapath_type=datapath,
            fail_mode=spec.fail_mode,
            stp=spec.stp,
            external_ids=ids,
            mtu=spec.mtu,
        )

    plan.add(
        f"create bridge {spec.name} ({datapath})",
        step,
        lambda tx: commands.delete_bridge(tx, spec.name),
    )


def _plan_bridge_update(plan: Plan, spec: BridgeSpec, row: BridgeRow, cache: OvsCache) -> None:
    given = spec.model_fields_set
    old_ids = dict(row.external_ids)
    new_ids = dict(old_ids)
    if "external_ids" in given:
        new_ids = {k: v for k, v in old_ids.items() if k.startswith(RESERVED_PREFIX)}
        new_ids.update(user_ids(spec.external_ids))
    if given & ADDRESSING_FIELDS - {"mtu"}:
        # The addressing keys are replaced; op-dbus's other keys (the owner) stay.
        new_ids = {k: v for k, v in new_ids.items() if k not in ADDRESSING_KEYS}
        new_ids.update(addressing_ids(spec))
    wanted: dict[str, Any] = {}
    if "datapath_type" in given and spec.datapath_type and spec.datapath_type != row.datapath_type:
        wanted["datapath_type"] = spec.datapath_type
    if "fail_mode" in given and (spec.fail_mode or "") != row.fail_mode:
        wanted["fail_mode"] = spec.fail_mode or ""
    if "stp" in given and spec.stp != row.stp_enable:
        wanted["stp"] = spec.stp
    if new_ids != old_ids:
        wanted["external_ids"] = new_ids
    own = next(
        (i for p in cache.ports_of(row) if p.name == row.name for i in cache.interfaces_of(p)), None
    )
    old_mtu = own.mtu_request if own else None
    if "mtu" in given and spec.mtu is not None and spec.mtu != old_mtu:
        wanted["mtu"] = spec.mtu
    if not wanted:
        return
    old: dict[str, Any] = {
        "datapath_type": row.datapath_type or None,
        "fail_mode": row.fail_mode or "",
        "stp": row.stp_enable,
        "external_ids": old_ids,
        "mtu": old_mtu,
    }
    undo_values = {key: old[key] for key in wanted}
    plan.add(
        f"update bridge {spec.name}: {', '.join(sorted(wanted))}",
        lambda tx: commands.update_bridge(tx, spec.name, **wanted),
        lambda tx: commands.update_bridge(tx, spec.name, **undo_values),
    )


def _plan_port(plan: Plan, bridge: str, spec: PortSpec, cache: OvsCache) -> None:
    owner = cache.bridge_of_port(spec.name)
    if owner is None:
        plan.add(
            f"add port {spec.name} ({spec.type.value}) to {bridge}",
            lambda tx: commands.add_port(tx, bridge, spec),
            lambda tx: commands.delete_port(tx, bridge, spec.name),
        )
        plan.new_ports.append((bridge, spec.name))
        return
    port = next(p for p in cache.ports_of(owner) if p.name == spec.name)
    current = _port_spec(cache, port)
    if owner.name != bridge:
        previous = owner.name
        plan.add(
            f"move port {spec.name} from {previous} to {bridge}",
            lambda tx: commands.move_port(tx, spec.name, bridge),
            lambda tx: commands.move_port(tx, spec.name, previous),
        )
    if current != spec:
        plan.add(
            f"update port {spec.name}",
            lambda tx: commands.update_port(tx, spec),
            lambda tx: commands.update_port(tx, current),
        )


def _run_all(steps: list[Step]) -> Step:
    def build(tx: Txn) -> None:
        for step in steps:
            step(tx)

    return build


def apply_job(network: NetworkService, doc: BridgesDocument) -> JobBody:
    async def run(ctx: JobContext) -> JobOutcome:
        ctx.log(f"applying {len(doc.bridges)} bridge(s)")
        plan = await apply_bridges(network, doc, ctx)
        output = {
            "created": plan.created,
            "updated": plan.updated,
            "unchanged": plan.unchanged,
            "changes": plan.changes,
        }
        if not plan.changes:
            return JobOutcome(
                f"nothing to change: {len(plan.unchanged)} bridge(s) already as described", output
            )
        counts = (len(plan.created), len(plan.updated), len(plan.unchanged))
        summary = "{} created, {} updated, {} unchanged".format(*counts)
        return JobOutcome(summary, output)

    return run


async def apply_bridges(
    network: NetworkService, doc: BridgesDocument, ctx: JobContext, *, owner: str = ""
) -> Plan:
    """Make OVSDB (and the bridges' addressing) match ``doc``: one transaction, undone
    as a whole if anything after it fails. ``owner`` marks the bridges it creates
    (``opdbus:owner``: only those may ever be pruned)."""
    cache = network.ovsdb.cache
    for spec in doc.bridges:
        for wanted in spec.ports:
            known = cache.bridge_of_port(wanted.name) is not None
            if (
                wanted.type is PortType.SYSTEM
                and not known
                and network.netlink.index(wanted.name) is None
            ):
                raise NotFound(f"port {wanted.name} of {spec.name}: no such network interface")
    plan = make_plan(doc, network.ovsdb.cache, network.default_datapath, owner=owner)
    for line in plan.changes:
        ctx.log(f"  {line}")
    if plan.steps:
        await network.ovsdb.transact(
            _run_all(plan.steps),
            undo=_run_all(list(reversed(plan.undo))),
            what=f"applying {len(plan.steps)} change(s) to bridges",
        )
        ctx.log(f"one OVSDB transaction of {len(plan.steps)} step(s): committed and applied")
    ctx.progress(0.5)
    checkpoint = {
        name: wanted_addressing(info.external_ids, None)
        for name, info in network.bridges.items()
        if name in plan.addressing
    }
    try:
        for bridge, port in plan.new_ports:
            await network.check_interface_error(bridge, port)
        for done, (name, addressing) in enumerate(plan.addressing.items(), 1):
            await network.netlink.wait_for(name, LINK_TIMEOUT)
            link = await network.configure(name, addressing, manage_gateway=True)
            ctx.log(
                f"  {name}: {', '.join(link.addresses) or 'no addresses'}"
                + (f", gateway {addressing.gateway}" if addressing.gateway else "")
            )
            ctx.progress(0.5 + 0.5 * done / len(plan.addressing))
    except BaseException:
        ctx.log("failed: rolling back")
        await asyncio.shield(_rollback(network, plan, checkpoint))
        raise
    for name in {b.name for b in doc.bridges}:
        await network.refresh(name)
    return plan


async def _rollback(network: NetworkService, plan: Plan, checkpoint: dict[str, Addressing]) -> None:
    if plan.undo:
        try:
            await network.ovsdb.transact(_run_all(list(reversed(plan.undo))))
        except OpdbusError as e:
            log.error("rolling back ApplyBridges failed: %s", e)
    for name, addressing in checkpoint.items():
        with contextlib.suppress(OpdbusError):
            await network.configure(name, addressing, manage_gateway=True)
