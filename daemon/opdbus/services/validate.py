"""Host validation (the Hyper-NixOS "Validation Script") as a job.

Each check is one progress step and one log line, and ends pass, warn, fail
or skip. ``quick`` runs the essential checks only (directories, config, disk,
memory, virtualization). ``fix`` repairs what is safe to repair -- missing
directories with the right modes, permissions that are too open, the
/dev/kvm group and mode -- and says exactly what it changed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from opdbus.backends import host
from opdbus.config import Config
from opdbus.errors import Failed
from opdbus.models.validation import CheckResult, CheckStatus, ValidateOptions, ValidationReport
from opdbus.services.audit import AuditLog
from opdbus.services.health import BackendHealth
from opdbus.services.jobs import JobBody, JobContext, JobFailed, JobOutcome

GIB = 1024**3
MIB = 1024**2
KVM_DEVICE = Path("/dev/kvm")
KVM_MODE = 0o660

PASS, WARN, FAIL, SKIP = CheckStatus.PASS, CheckStatus.WARN, CheckStatus.FAIL, CheckStatus.SKIP


@dataclass(frozen=True)
class HostPaths:
    """Where things are; tests point these at temporary places."""

    config_file: Path
    kvm_device: Path = KVM_DEVICE
    nixos_marker: Path = Path("/etc/NIXOS")


Check = Callable[[bool], Awaitable[CheckResult]]


class Validator:
    def __init__(
        self, config: Config, paths: HostPaths, health: BackendHealth, audit: AuditLog
    ) -> None:
        self._config = config
        self._paths = paths
        self._health = health
        self._audit = audit

    def checks(self, quick: bool) -> list[tuple[str, Check]]:
        essential: list[tuple[str, Check]] = [
            ("state-dir", self._state_dir),
            ("config", self._config_file),
            ("disk-space", self._disk),
            ("memory", self._memory),
            ("cpu-virtualization", self._cpu),
            ("kvm-device", self._kvm),
        ]
        if quick:
            return essential
        backends: list[tuple[str, Check]] = [
            (f"backend-{name}", self._backend_check(name))
            for name in ("polkit", "ovsdb", "libvirt", "lxc")
        ]
        return [
            *essential,
            ("source-dir", self._source_dir),
            ("nixos-flake", self._flake),
            *backends,
            ("bus-policy", self._bus_policy),
            ("polkit-actions", self._polkit_actions),
            ("audit-log", self._audit_log),
        ]

    def job(self, options: ValidateOptions) -> JobBody:
        async def run(ctx: JobContext) -> JobOutcome:
            checks = self.checks(options.quick)
            report = ValidationReport()
            mode = ("quick" if options.quick else "full") + (", fixing" if options.fix else "")
            ctx.log(f"validating this host ({mode}): {len(checks)} checks")
            ctx.step(0, len(checks))
            for done, (name, check) in enumerate(checks, 1):
                try:
                    result = await check(options.fix)
                except OSError as e:
                    # e.g. --fix without the right to chmod: a failed check, not a crash.
                    what = "check or fix" if options.fix else "check"
                    where = f" ({e.filename})" if e.filename else ""
                    result = CheckResult(
                        status=FAIL, message=f"could not {what}: {e.strerror}{where}"
                    )
                result = result.model_copy(update={"name": name})
                report.checks.append(result)
                ctx.log(f"[{result.status.value}] {name}: {result.message}")
                for change in result.fixed:
                    ctx.log(f"  fixed: {change}")
                ctx.step(done, len(checks))
            output = report.model_dump(mode="json")
            failed = [check.name for check in report.checks if check.status is FAIL]
            if failed:
                raise JobFailed(
                    Failed(
                        f"{len(failed)} of {len(checks)} checks failed ({', '.join(failed)}); "
                        f"{report.summary()}"
                    ),
                    output,
                )
            return JobOutcome(report.summary(), output)

        return run

    # -- directories and files ----------------------------------------------

    async def _state_dir(self, fix: bool) -> CheckResult:
        state = self._config.state_dir
        return await asyncio.to_thread(
            _check_dirs, [state, state / "jobs", state / "audit"], 0o750, fix, private=True
        )

    async def _source_dir(self, fix: bool) -> CheckResult:
        source = self._config.paths.source_dir
        info = await asyncio.to_thread(host.path_info, source)
        if not info.exists and not fix:
            return CheckResult(
                status=WARN, message=f"{source} does not exist yet (opctl sync fills it)"
            )
        return await asyncio.to_thread(_check_dirs, [source], 0o755, fix, private=False)

    async def _config_file(self, fix: bool) -> CheckResult:
        return await asyncio.to_thread(_check_config, self._paths.config_file, fix)

    async def _flake(self, fix: bool) -> CheckResult:
        if not await asyncio.to_thread(self._paths.nixos_marker.exists):
            return CheckResult(status=SKIP, message="not a NixOS host")
        flake = self._config.paths.flake_dir / "flake.nix"
        if await asyncio.to_thread(flake.exists):
            return CheckResult(status=PASS, message=f"{flake} present")
        return CheckResult(
            status=FAIL, message=f"{flake} is missing: nixos-rebuild has nothing to build"
        )

    async def _bus_policy(self, fix: bool) -> CheckResult:
        for path in self._config.paths.bus_policy:
            try:
                text = await asyncio.to_thread(path.read_text)
            except OSError:
                continue
            if 'own="org.opdbus"' in text:
                return CheckResult(status=PASS, message=f"installed at {path}")
            return CheckResult(status=FAIL, message=f"{path} exists but does not grant org.opdbus")
        where = " or ".join(str(path) for path in self._config.paths.bus_policy)
        return CheckResult(
            status=FAIL,
            message=f"not installed ({where}); copy dbus-policy/org.opdbus.conf there",
        )

    async def _polkit_actions(self, fix: bool) -> CheckResult:
        path = self._config.paths.polkit_actions
        if await asyncio.to_thread(path.exists):
            return CheckResult(status=PASS, message=f"installed at {path}")
        return CheckResult(
            status=WARN,
            message=f"{path} missing: polkit cannot grant op-dbus actions to non-admin users",
        )

    async def _audit_log(self, fix: bool) -> CheckResult:
        verdict = await self._audit.verify()
        if verdict.ok:
            return CheckResult(status=PASS, message=f"{verdict.entries} entries, chain intact")
        return CheckResult(
            status=FAIL, message=f"broken at entry {verdict.first_bad_seq}: {verdict.reason}"
        )

    # -- resources -----------------------------------------------------------

    async def _disk(self, fix: bool) -> CheckResult:
        state = self._config.state_dir
        pool = self._config.libvirt.pool_dir or state / "images"
        free, total = await asyncio.to_thread(host.free_bytes, state)
        shared = await asyncio.to_thread(host.same_file_system, state, pool)
        limits = self._config.validate_
        text = f"{free / GIB:.1f} GiB free of {total / GIB:.1f} GiB under {state}"
        if shared:
            # A VM disk filling up leaves the audit log no room: then every
            # change is refused (fail closed) until space is freed.
            text += f" (shared with the VM image pool {pool}: keep room for the audit log)"
        else:
            pool_free, _ = await asyncio.to_thread(host.free_bytes, pool)
            text += f"; VM image pool {pool}: {pool_free / GIB:.1f} GiB free"
            if pool_free < limits.disk_warn_gib * GIB:
                return CheckResult(
                    status=WARN,
                    message=f"{text} (the pool is below {limits.disk_warn_gib:g} GiB)",
                )
        if free < limits.disk_fail_gib * GIB:
            return CheckResult(status=FAIL, message=f"{text} (below {limits.disk_fail_gib:g} GiB)")
        if free < limits.disk_warn_gib * GIB:
            return CheckResult(status=WARN, message=f"{text} (below {limits.disk_warn_gib:g} GiB)")
        return CheckResult(status=PASS, message=text)

    async def _memory(self, fix: bool) -> CheckResult:
        info = await asyncio.to_thread(host.meminfo)
        available = info.get("MemAvailable", info.get("MemFree", 0))
        total = info.get("MemTotal", 0)
        limits = self._config.validate_
        text = f"{available / MIB:.0f} MiB available of {total / MIB:.0f} MiB"
        if available < limits.memory_fail_mib * MIB:
            return CheckResult(status=FAIL, message=f"{text} (below {limits.memory_fail_mib} MiB)")
        if available < limits.memory_warn_mib * MIB:
            return CheckResult(status=WARN, message=f"{text} (below {limits.memory_warn_mib} MiB)")
        return CheckResult(status=PASS, message=text)

    async def _cpu(self, fix: bool) -> CheckResult:
        if not self._health.enabled("libvirt"):
            return CheckResult(status=SKIP, message=f"no VMs in {self._config.mode.value} mode")
        flags = await asyncio.to_thread(host.cpu_virt_flags)
        if "vmx" in flags:
            return CheckResult(status=PASS, message="Intel VT-x (vmx)")
        if "svm" in flags:
            return CheckResult(status=PASS, message="AMD-V (svm)")
        return CheckResult(
            status=WARN,
            message="no vmx/svm flag: VMs can only run under TCG emulation (slow)",
        )

    async def _kvm(self, fix: bool) -> CheckResult:
        if not self._health.enabled("libvirt"):
            return CheckResult(status=SKIP, message=f"no VMs in {self._config.mode.value} mode")
        return await asyncio.to_thread(_check_kvm, self._paths.kvm_device, fix)

    # -- backends ------------------------------------------------------------

    def _backend_check(self, name: str) -> Check:
        async def check(fix: bool) -> CheckResult:
            if not self._health.enabled(name):
                return CheckResult(status=SKIP, message=f"off in {self._config.mode.value} mode")
            probe = await self._health.probe(name)
            if probe.available:
                return CheckResult(status=PASS, message=probe.detail)
            if name == "polkit":
                group = self._config.auth.admin_group
                return CheckResult(
                    status=WARN,
                    message=f"{probe.detail}; only root and group '{group}' may change anything",
                )
            return CheckResult(status=FAIL, message=probe.detail)

        return check


def _check_dirs(paths: list[Path], mode: int, fix: bool, *, private: bool) -> CheckResult:
    """Each directory exists with at most ``mode``; fix creates it or tightens it."""
    fixed: list[str] = []
    problems: list[str] = []
    for path in paths:
        info = host.path_info(path)
        if not info.exists:
            if fix:
                path.mkdir(mode=mode, parents=True, exist_ok=True)
                os.chmod(path, mode)
                fixed.append(f"created {path} with mode {mode:04o}")
            else:
                problems.append(f"{path} is missing")
            continue
        if not info.is_dir:
            problems.append(f"{path} is not a directory")
            continue
        if os.geteuid() == 0 and info.uid != 0:
            problems.append(f"{path} is owned by uid {info.uid}, not root")
        too_open = info.mode & ~mode & 0o777
        # World-writable is never fine; for private dirs any world access is too much.
        if too_open & 0o022 or (private and too_open & 0o007):
            if fix:
                os.chmod(path, info.mode & mode)
                fixed.append(f"{path}: mode {info.mode:04o} -> {info.mode & mode:04o}")
            else:
                problems.append(f"{path} has mode {info.mode:04o} (at most {mode:04o} expected)")
    names = ", ".join(str(path) for path in paths)
    if problems:
        return CheckResult(status=FAIL, message="; ".join(problems), fixed=fixed)
    return CheckResult(status=PASS, message=f"{names} in order", fixed=fixed)


def _check_config(config_file: Path, fix: bool) -> CheckResult:
    fixed: list[str] = []
    directory = config_file.parent
    if not directory.exists():
        if not fix:
            return CheckResult(
                status=WARN, message=f"{directory} is missing; built-in defaults in use"
            )
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        fixed.append(f"created {directory} with mode 0755")
    info = host.path_info(config_file)
    if not info.exists:
        return CheckResult(
            status=WARN, message=f"no {config_file}; built-in defaults in use", fixed=fixed
        )
    if info.mode & 0o022:
        if not fix:
            return CheckResult(
                status=FAIL,
                message=f"{config_file} is writable by others (mode {info.mode:04o})",
            )
        os.chmod(config_file, info.mode & ~0o022)
        fixed.append(f"{config_file}: mode {info.mode:04o} -> {info.mode & ~0o022:04o}")
    return CheckResult(status=PASS, message=f"{config_file} valid and protected", fixed=fixed)


def _check_kvm(device: Path, fix: bool) -> CheckResult:
    info = host.path_info(device)
    if not info.exists:
        flags = host.cpu_virt_flags()
        status = FAIL if flags else WARN
        reason = "the kvm module is not loaded" if flags else "this CPU has no virtualization flags"
        return CheckResult(
            status=status, message=f"{device} missing: {reason}; VMs fall back to TCG"
        )
    kvm_gid = host.group_gid("kvm")
    fixed: list[str] = []
    wrong = []
    if kvm_gid is not None and info.gid != kvm_gid:
        wrong.append(f"group gid {info.gid}, not kvm")
    if info.mode & KVM_MODE != KVM_MODE:
        wrong.append(f"mode {info.mode:04o}, not {KVM_MODE:04o}")
    if wrong and fix:
        if kvm_gid is not None:
            os.chown(device, -1, kvm_gid)
        os.chmod(device, KVM_MODE | (info.mode & ~0o777 & 0o7777))
        fixed.append(f"{device}: {', '.join(wrong)} -> group kvm, mode {KVM_MODE:04o}")
        wrong = []
    if wrong:
        return CheckResult(
            status=FAIL,
            message=f"{device} has {', '.join(wrong)}: QEMU (group kvm) cannot open it",
        )
    try:
        version = host.kvm_api_version(device)
    except OSError as e:
        return CheckResult(
            status=FAIL, message=f"{device} cannot be used: {e.strerror}", fixed=fixed
        )
    return CheckResult(
        status=PASS,
        message=f"{device} usable (KVM API {version}), group kvm, mode 0660",
        fixed=fixed,
    )
