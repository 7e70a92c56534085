"""org.opdbus.Manager1 at /org/opdbus: the daemon's front door."""

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, cast

from dbus_fast import PropertyAccess, Variant
from dbus_fast.annotations import (
    DBusBool,
    DBusDict,
    DBusObjectPath,
    DBusSignature,
    DBusStr,
    DBusUInt32,
    DBusUInt64,
)
from dbus_fast.service import dbus_property, dbus_signal

from opdbus.bus.base import (
    BusContext,
    OpdbusInterface,
    bus_method,
    caller_is_admin,
    current_caller,
    submit_job,
)
from opdbus.bus.codec import decode_options, validate
from opdbus.config import Mode
from opdbus.errors import BackendUnavailable, InvalidArgs, NotSupported
from opdbus.models.audit import AuditEntry, AuditVerdict, SealOptions, rfc3339_to_us
from opdbus.models.container import ContainerSpec
from opdbus.models.document import check_size, parse_json
from opdbus.models.network import BridgesDocument, BridgeSpec, SeedNet
from opdbus.models.sync import RebuildAction, RebuildOptions, SyncOptions, UpdateOptions
from opdbus.models.validation import ValidateOptions
from opdbus.models.vm import CreateVmOptions
from opdbus.names import (
    BRIDGE_IFACE,
    CONTAINER_IFACE,
    INSTALL_TARGET,
    JOB_IFACE,
    MANAGER_IFACE,
    REBUILD_TARGET,
    ROOT_PATH,
    SYNC_TARGET,
    UNIT_IFACE,
    VM_IFACE,
    Action,
    bridge_path,
    container_path,
    vm_name_target,
    vm_path,
)
from opdbus.services.audit import AuditLog
from opdbus.services.health import BackendHealth
from opdbus.services.jobs import JobManager
from opdbus.services.rebuild import RebuildService
from opdbus.services.snapshots import OFF as SNAPSHOTS_OFF
from opdbus.services.snapshots import SnapshotCache
from opdbus.services.sync import SyncService
from opdbus.services.update import update_job
from opdbus.services.validate import Validator
from opdbus.services.workers import Workers

if TYPE_CHECKING:  # a kind's service (and its library) loads only where the kind runs
    from opdbus.services.containers import ContainerService
    from opdbus.services.install import Installer
    from opdbus.services.network import NetworkService
    from opdbus.services.vms import VmService


def _apply_job(network: "NetworkService", doc: Any) -> Any:
    from opdbus.services.network_apply import apply_job

    return apply_job(network, doc)


BackendMapT = Annotated[dict[str, tuple[bool, str]], DBusSignature("a{s(bs)}")]
ObjectPathsT = Annotated[list[str], DBusSignature("ao")]
AuditVerdictT = Annotated[tuple[bool, int, str], DBusSignature("bts")]
ProfileCheckT = Annotated[tuple[str, list[str]], DBusSignature("sas")]
AuditEntriesT = Annotated[list[dict[str, Variant]], DBusSignature("aa{sv}")]
CountsT = Annotated[dict[str, int], DBusSignature("a{su}")]
ObjectsT = Annotated[dict[str, dict[str, Variant]], DBusSignature("a{oa{sv}}")]
# The interfaces whose objects come and go (GetObjects lists one kind of them).
LISTED = (VM_IFACE, BRIDGE_IFACE, CONTAINER_IFACE, JOB_IFACE, UNIT_IFACE)
SnapshotsT = Annotated[list[tuple[str, str, int, int, str]], DBusSignature("a(sstts)")]

_AUDIT_TYPES = {"seq": "t", "uid": "u", "time": "t"}


@dataclass
class ManagerServices:
    version: str
    mode: Mode
    jobs: JobManager
    audit: AuditLog
    checks: Workers
    health: BackendHealth
    validator: Validator
    sync: SyncService
    rebuild: RebuildService
    # Loaded and made on first use (daemon.lazy_installer): a host installs once.
    installer: Callable[[], Awaitable["Installer"]]
    # The running kinds of resource (opdbus.kinds) by name, and those this mode has.
    kinds: Mapping[str, object] = field(default_factory=dict)
    in_mode: frozenset[str] = frozenset()
    snapshots: SnapshotCache | None = None
    menu_timeout: int = 10  # menu.autostart_timeout_seconds
    libvirt_uri: str = ""  # where `virsh console` finds the VMs ("": no VMs in this mode)
    lxc_path: str = ""  # where `lxc-attach -P` finds the containers

    def running(self, name: str, what: str) -> object:
        """The service of a running kind, or the error saying why ``what`` cannot be had.

        By name, not by class: a kind's service module (and its library) is not
        even imported where the kind does not run.
        """
        service = self.kinds.get(name)
        if service is not None:
            return service
        if name in self.in_mode:  # the mode has it; the host could not start it
            raise BackendUnavailable(
                f"{what} are unavailable on this host (Manager1.Backends, `opctl status`, says why)"
            )
        raise NotSupported(f"{what} are off in {self.mode.value} mode")


def _bridges_document(text: str) -> BridgesDocument:
    """ApplyBridges' argument, checked (in a thread: a big document takes a while)."""
    data = parse_json(text, "ApplyBridges")
    if isinstance(data, dict) and "interfaces" in data and "bridges" not in data:
        data = validate(SeedNet, data, "ApplyBridges").bridges()
    return validate(BridgesDocument, data, "ApplyBridges")


def verdict_text(verdict: AuditVerdict) -> str:
    """VerifyAudit's reason: every problem, or what an intact log holds."""
    if verdict.problems:
        return verdict.reason
    sealed = f"; sealed through entry {verdict.sealed_through}" if verdict.sealed_through else ""
    return f"{verdict.entries} entries, chain intact{sealed}"


def audit_entry_to_dbus(entry: AuditEntry) -> dict[str, Variant]:
    # Times cross the bus in one unit, µs since the epoch (the chain hashes the
    # RFC 3339 text, which us_to_rfc3339 gives back exactly).
    fields = entry.model_dump()
    fields["time"] = rfc3339_to_us(entry.time)
    return {key: Variant(_AUDIT_TYPES.get(key, "s"), value) for key, value in fields.items()}


class Manager1(OpdbusInterface):
    INTERFACE = MANAGER_IFACE

    def __init__(self, ctx: BusContext, services: ManagerServices) -> None:
        super().__init__(ctx)
        self._s = services
        services.health.on_change.append(self._backends_changed)
        services.audit.on_append.append(self._audit_advanced)
        vms = services.kinds.get("vms")
        if vms is not None:
            cast("VmService", vms).on_last_run.append(self._last_run_changed)

    def _last_run_changed(self, name: str) -> None:
        self.emit_properties_changed({"LastRunVM": name})

    def _backends_changed(self) -> None:
        self.emit_properties_changed({"Backends": self.Backends})

    def _audit_advanced(self) -> None:
        self.emit_properties_changed({"AuditSeq": self._s.audit.head_seq})

    # -- properties ----------------------------------------------------------

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> DBusStr:
        return self._s.version

    @dbus_property(access=PropertyAccess.READ)
    def Mode(self) -> DBusStr:
        return self._s.mode.value

    @dbus_property(access=PropertyAccess.READ)
    def Backends(self) -> BackendMapT:
        return {
            name: (probe.available, probe.detail) for name, probe in self._s.health.status.items()
        }

    @dbus_property(access=PropertyAccess.READ)
    def AuditSeq(self) -> DBusUInt64:
        return self._s.audit.head_seq

    @dbus_property(access=PropertyAccess.READ)
    def AuditEnabled(self) -> DBusBool:
        return self._s.audit.enabled

    @dbus_property(access=PropertyAccess.READ)
    def LastRunVM(self) -> DBusStr:
        vms = self._s.kinds.get("vms")
        return cast("VmService", vms).last_run if vms is not None else ""

    @dbus_property(access=PropertyAccess.READ)
    def MenuAutostartTimeout(self) -> DBusUInt32:
        return self._s.menu_timeout

    @dbus_property(access=PropertyAccess.READ)
    def LibvirtURI(self) -> DBusStr:
        return self._s.libvirt_uri if "vms" in self._s.in_mode else ""

    @dbus_property(access=PropertyAccess.READ)
    def LXCPath(self) -> DBusStr:
        return self._s.lxc_path if "containers" in self._s.in_mode else ""

    # -- jobs ----------------------------------------------------------------

    @bus_method(read_only=True)
    async def ListJobs(self) -> ObjectPathsT:
        return [job.path for job in self._s.jobs.all()]

    @bus_method(read_only=True)
    async def CountJobs(self) -> CountsT:
        return self._s.jobs.counts()

    @bus_method(read_only=True)
    async def GetObjects(self, interface: DBusStr) -> ObjectsT:
        if interface not in LISTED:
            raise InvalidArgs(
                f"{interface!r} is not an interface of listed objects; one of: " + ", ".join(LISTED)
            )
        return self.ctx.bus.objects_with(interface)

    @bus_method(read_only=True)
    async def GetJob(self, id: DBusUInt32) -> DBusObjectPath:
        return self._s.jobs.get(id).path

    @dbus_signal()
    def JobNew(self, path: str) -> DBusObjectPath:
        return path

    @dbus_signal()
    def JobRemoved(self, path: str, result: str) -> Annotated[list[Any], DBusSignature("os")]:
        return [path, result]

    # -- host ----------------------------------------------------------------

    @bus_method(action=Action.VALIDATE)
    async def Validate(self, options: DBusDict) -> DBusObjectPath:
        opts = decode_options(ValidateOptions, options, "Validate")
        return await submit_job(self._s.jobs, "Validate", self._s.validator.job(opts), [ROOT_PATH])

    # -- sync, rebuild, update ------------------------------------------------------

    @bus_method(action=Action.SYNC)
    async def Sync(self, options: DBusDict) -> DBusObjectPath:
        opts = decode_options(SyncOptions, options, "Sync")
        return await submit_job(
            self._s.jobs, f"Sync {opts.ref}", self._s.sync.job(opts), [SYNC_TARGET]
        )

    @bus_method(action=Action.REBUILD)
    async def Rebuild(self, action: DBusStr, options: DBusDict) -> DBusObjectPath:
        try:
            verb = RebuildAction(action)
        except ValueError:
            allowed = ", ".join(a.value for a in RebuildAction)
            raise InvalidArgs(f"Rebuild: action {action!r} is not one of {allowed}") from None
        opts = decode_options(RebuildOptions, options, "Rebuild")
        return await submit_job(
            self._s.jobs, f"Rebuild {verb.value}", self._s.rebuild.job(verb, opts), [REBUILD_TARGET]
        )

    @bus_method(action=Action.UPDATE)
    async def Update(self, options: DBusDict) -> DBusObjectPath:
        opts = decode_options(UpdateOptions, options, "Update")
        return await submit_job(
            self._s.jobs,
            f"Update {opts.ref}",
            update_job(self._s.validator, self._s.sync, self._s.rebuild, opts),
            [ROOT_PATH, SYNC_TARGET, REBUILD_TARGET],
        )

    # -- installing the hypervisor ----------------------------------------------

    @bus_method(action=Action.MIGRATE)
    async def MigrateHostSettings(self, options: DBusDict) -> DBusObjectPath:
        installer = await self._s.installer()
        from opdbus.models.install import MigrateOptions  # loaded with the installer

        opts = decode_options(MigrateOptions, options, "MigrateHostSettings")
        what = "dry run" if opts.dry_run else "write"
        return await submit_job(
            self._s.jobs,
            f"MigrateHostSettings ({what})",
            installer.migrator.job(opts, current_caller().uid),
            [INSTALL_TARGET],
        )

    @bus_method(action=Action.INSTALL)
    async def Install(self, options: DBusDict) -> DBusObjectPath:
        installer = await self._s.installer()
        from opdbus.models.install import InstallOptions  # loaded with the installer

        opts = decode_options(InstallOptions, options, "Install")
        self._s.jobs.check_idle(INSTALL_TARGET, "the installer")
        await installer.prepare(opts)
        return await submit_job(
            self._s.jobs,
            f"Install {opts.source}",
            installer.job(opts, current_caller().uid),
            [INSTALL_TARGET, SYNC_TARGET, REBUILD_TARGET],
        )

    # -- bridges ----------------------------------------------------------------

    def _network(self) -> "NetworkService":
        return cast("NetworkService", self._s.running("network", "Open vSwitch bridges"))

    @bus_method(action=Action.BRIDGE_CREATE)
    async def CreateBridge(self, name: DBusStr, options: DBusDict) -> DBusObjectPath:
        network = self._network()
        if "ports" in options:
            raise InvalidArgs("CreateBridge takes no ports: use AddPort, or ApplyBridges")
        spec = decode_options(BridgeSpec, options, "CreateBridge", name=name)
        info = await network.create_bridge(spec.name, spec)
        return bridge_path(info.name)

    @bus_method(action=Action.BRIDGE_APPLY)
    async def ApplyBridges(self, document: DBusStr) -> DBusObjectPath:
        network = self._network()
        check_size(document, "ApplyBridges")
        doc = await self._s.checks.run(_bridges_document, document)
        return await submit_job(
            self._s.jobs,
            "ApplyBridges",
            _apply_job(network, doc),
            [bridge_path(bridge.name) for bridge in doc.bridges],
        )

    # -- virtual machines ------------------------------------------------------

    def _vms(self) -> "VmService":
        return cast("VmService", self._s.running("vms", "virtual machines"))

    @bus_method(action=Action.VM_CREATE)
    async def CreateVM(self, profile: DBusStr, options: DBusDict) -> DBusObjectPath:
        vms = self._vms()
        opts = decode_options(CreateVmOptions, options, "CreateVM")
        spec, uuid = await vms.prepare_create(profile)
        return await submit_job(
            self._s.jobs,
            f"CreateVM {spec.name}",
            vms.create_job(spec, uuid, start=opts.start),
            [vm_path(uuid), vm_name_target(spec.name)],
        )

    @bus_method(read_only=True, expensive=True)
    async def CheckVMProfile(self, profile: DBusStr) -> ProfileCheckT:
        # Only an administrator learns whether files outside the image
        # directories exist: for anyone else this is not a file oracle.
        trusted = await caller_is_admin(self.ctx)
        _, xml, warnings = await self._vms().check_profile(profile, trusted=trusted)
        return (xml, warnings)

    # -- containers --------------------------------------------------------------

    @bus_method(action=Action.CONTAINER_CREATE)
    async def CreateContainer(self, name: DBusStr, options: DBusDict) -> DBusObjectPath:
        containers = cast("ContainerService", self._s.running("containers", "containers"))
        spec = decode_options(ContainerSpec, options, "CreateContainer", name=name)
        cid = await containers.prepare_create(spec.name, spec)
        return await submit_job(
            self._s.jobs,
            f"CreateContainer {spec.name}",
            containers.create_job(spec.name, cid, spec),
            [container_path(spec.name)],
        )

    # -- audit ---------------------------------------------------------------

    @bus_method(read_only=True, expensive=True)
    async def VerifyAudit(self) -> AuditVerdictT:
        verdict = await self._s.audit.verify()
        return (verdict.ok, verdict.first_bad_seq, verdict_text(verdict))

    @bus_method(action=Action.AUDIT_SEAL)
    async def InitAuditSealing(self, options: DBusDict) -> DBusStr:
        opts = decode_options(SealOptions, options, "InitAuditSealing")
        return await self._s.audit.init_sealing(
            opts.epoch_seconds, force=opts.force, uid=current_caller().uid
        )

    # -- the snapshot cache ---------------------------------------------------

    @bus_method(read_only=True, expensive=True)
    async def ListSnapshots(self, kind: DBusStr) -> SnapshotsT:
        if self._s.snapshots is None:
            raise NotSupported(SNAPSHOTS_OFF)
        found = await self._s.snapshots.list(kind or None)
        return [(s.kind, s.id, s.created_us, s.bytes, str(s.path)) for s in found]

    @bus_method(read_only=True, expensive=True)
    async def GetAudit(self, start: DBusUInt64, limit: DBusUInt32) -> AuditEntriesT:
        entries = await self._s.audit.read(start, limit)
        return [audit_entry_to_dbus(entry) for entry in entries]
