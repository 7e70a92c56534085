"""Daemon settings: /etc/op-dbus/config.json validated by pydantic, then flags.

A bad file must stop the daemon with one line that names the bad field, so
every model forbids unknown keys (a typo is an error, not a silent default).
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_CONFIG_PATH = Path("/etc/op-dbus/config.json")
DEFAULT_STATE_DIR = Path("/var/lib/op-dbus")


class Mode(StrEnum):
    """Which backends the daemon runs (the op-dbus seed's dependency matrix)."""

    AGENT = "agent"  # D-Bus + systemd only
    STANDALONE = "standalone"  # + Open vSwitch
    FULL = "full"  # + LXC and VMs


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AuthConfig(_Section):
    admin_group: str = Field(
        "opdbus", min_length=1, description="members may call mutating methods"
    )
    admin_uids: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list, description="extra users treated as admins (the sandbox adds its own)"
    )
    polkit: bool = Field(True, description="ask polkitd about other callers when it is on the bus")


class JobsConfig(_Section):
    retention_seconds: float = Field(
        3600.0, ge=0, description="finished jobs stay readable this long"
    )
    max_concurrent: int = Field(4, ge=1, le=256)
    cancel_wait_seconds: float = Field(
        10.0, gt=0, description="Cancel() waits this long for the job"
    )


class HealthConfig(_Section):
    interval_seconds: float = Field(15.0, gt=0, description="how often backends are probed")
    timeout_seconds: float = Field(5.0, gt=0, description="how long one probe may take")


class ValidateConfig(_Section):
    disk_warn_gib: float = Field(5.0, ge=0)
    disk_fail_gib: float = Field(1.0, ge=0)
    memory_warn_mib: int = Field(1024, ge=0)
    memory_fail_mib: int = Field(256, ge=0)


class PathsConfig(_Section):
    source_dir: Path = Field(Path("/etc/hypervisor/src"), description="where smart sync writes")
    flake_dir: Path = Field(Path("/etc/nixos"), description="the flake nixos-rebuild builds")
    configuration_dir: Path = Field(
        Path("/etc/hypervisor/configuration"),
        description="where the installer writes users-local.nix and system-local.nix",
    )
    host_root: Path = Field(
        Path("/"),
        description="the root the installer reads the host's accounts and settings from "
        "(etc/passwd, etc/shadow, etc/locale.conf, proc/swaps, ...)",
    )
    bus_policy: list[Path] = Field(
        default_factory=lambda: [
            Path("/etc/dbus-1/system.d/org.opdbus.conf"),
            Path("/usr/share/dbus-1/system.d/org.opdbus.conf"),
        ],
        description="where the installed bus policy may be",
    )
    polkit_actions: Path = Path("/usr/share/polkit-1/actions/org.opdbus.policy")


class LibvirtConfig(_Section):
    uri: str = Field("qemu:///system", min_length=1)
    pool: str = Field("opdbus", min_length=1, description="the storage pool VM disks go in")
    pool_dir: Path | None = Field(None, description="its directory (default: STATE_DIR/images)")
    iso_dirs: list[Path] = Field(
        default_factory=lambda: [Path("/var/lib/hypervisor/isos"), Path("/var/lib/libvirt/images")],
        description="profiles may only attach ISO and seed images from these directories",
    )
    shutdown_timeout_seconds: float = Field(60.0, gt=0, description="Shutdown waits this long")
    stats_interval_seconds: float = Field(5.0, gt=0, description="CPU/memory refresh period")


class OvsdbConfig(_Section):
    remote: str = Field("unix:/run/openvswitch/db.sock", min_length=1)
    # "netdev" (userspace) where the kernel has no openvswitch module.
    datapath_type: Literal["system", "netdev"] = "system"
    apply_timeout_seconds: float = Field(10.0, gt=0, description="how long ovs-vswitchd may take")
    request_timeout_seconds: float = Field(
        10.0, gt=0, le=600, description="how long ovsdb-server may take to answer a change"
    )


class LxcConfig(_Section):
    path: Path = Path("/var/lib/lxc")
    stop_timeout_seconds: float = Field(
        10.0, gt=0, description="Stop without force waits this long for a clean halt, then kills"
    )
    stats_interval_seconds: float = Field(5.0, gt=0, description="usage refresh period")
    download_server: str | None = Field(
        None, description="an images mirror for the download template (none: busybox only)"
    )


class SyncConfig(_Section):
    repo: str = Field(
        "MasterofNull/Hyper-NixOS", pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$",
        description="owner/name of the configuration source",
    )  # fmt: skip
    api_url: str = Field("https://api.github.com", description="the Git host's REST API")
    raw_url: str = Field(
        "https://raw.githubusercontent.com/{repo}/{sha}/{path}",
        description="one file's bytes at a commit ({repo}, {sha}, {path})",
    )
    token_file: Path | None = Field(
        None,
        description="a 0600 file holding the API token (default: github-token beside the "
        "config file; $GITHUB_TOKEN wins)",
    )
    concurrency: int = Field(8, ge=1, le=64, description="downloads in flight")
    retries: int = Field(4, ge=0, le=10, description="retries of a failed request")
    timeout_seconds: float = Field(30.0, gt=0, description="one request's bound")


class RebuildConfig(_Section):
    command: str = Field("nixos-rebuild", min_length=1, description="the nixos-rebuild to run")
    kill_grace_seconds: float = Field(5.0, gt=0, description="SIGTERM to SIGKILL on cancel")


class InstallConfig(_Section):
    generate_config_command: str = Field(
        "nixos-generate-config", min_length=1, description="prints the hardware configuration"
    )
    parse_command: str | None = Field(
        "nix-instantiate",
        min_length=1,
        description="checks every generated Nix file with --parse before it replaces one "
        "(null: no check)",
    )
    reboot_command: list[str] = Field(
        default_factory=lambda: ["systemctl", "reboot"],
        min_length=1,
        description="run by Install --reboot after a successful switch",
    )
    command_timeout_seconds: float = Field(
        120.0, gt=0, le=3600, description="bound of each helper command the installer runs"
    )


class MenuConfig(_Section):
    autostart_timeout_seconds: int = Field(
        10,
        ge=0,
        le=3600,
        description="the console menu starts the last-run VM after this countdown (0: never)",
    )


class SystemdConfig(_Section):
    bus_address: str = Field(
        "unix:path=/run/dbus/system_bus_socket",
        min_length=1,
        description="the bus systemd answers on (its system bus)",
    )
    job_timeout_seconds: float = Field(
        90.0, gt=0, le=3600, description="how long one unit's start or stop may take"
    )


class CacheConfig(_Section):
    enabled: bool = Field(
        False,
        description="keep snapshots under STATE_DIR/@cache: every state checkpoint, and the "
        "source tree before each sync overwrites it",
    )
    max_age_days: float = Field(30.0, gt=0, description="older snapshots are pruned")
    max_bytes: int = Field(
        2 * 1024**3, ge=0, description="past this, the oldest are pruned (the newest stays)"
    )


class AuditConfig(_Section):
    enabled: bool | None = Field(
        None,
        description="keep the hash-chained audit log (default: on, except in agent mode)",
    )


class StateConfig(_Section):
    file: Path = Field(
        Path("/etc/op-dbus/state.json"),
        description="the desired state, applied at start and on Reload()/SIGHUP (none: nothing)",
    )
    drift_policy: Literal["report", "enforce"] = Field(
        "report", description="report drift, or also apply the document again"
    )
    enforce_delay_seconds: float = Field(
        2.0, ge=0, le=3600, description="quiet time before drift is repaired (enforce)"
    )
    backend_wait_seconds: float = Field(
        30.0,
        ge=0,
        le=600,
        description="in an apply that starts systemd units, how long a later section waits "
        "for its backend (openvswitch.service -> OVSDB) to come up",
    )


class Config(_Section):
    mode: Mode = Mode.FULL
    state_dir: Path = DEFAULT_STATE_DIR
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    auth: AuthConfig = AuthConfig()
    jobs: JobsConfig = JobsConfig()
    health: HealthConfig = HealthConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    paths: PathsConfig = PathsConfig()
    libvirt: LibvirtConfig = LibvirtConfig()
    ovsdb: OvsdbConfig = OvsdbConfig()
    lxc: LxcConfig = LxcConfig()
    sync: SyncConfig = SyncConfig()
    rebuild: RebuildConfig = RebuildConfig()
    install: InstallConfig = InstallConfig()
    menu: MenuConfig = MenuConfig()
    state: StateConfig = StateConfig()
    systemd: SystemdConfig = SystemdConfig()
    audit: AuditConfig = AuditConfig()
    cache: CacheConfig = CacheConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def audit_enabled(self) -> bool:
        """The original op-dbus keeps its blockchain except in agent mode."""
        if self.audit.enabled is not None:
            return self.audit.enabled
        return self.mode is not Mode.AGENT


class ConfigError(Exception):
    """A config file that cannot be used; the message is one line naming the problem."""


def _describe(error: ValidationError, path: Path) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown setting"
    value = first.get("input")
    shown = "" if isinstance(value, dict) or value is None else f" (got {value!r})"
    more = len(error.errors()) - 1
    tail = f"; and {more} more problem{'s' if more > 1 else ''}" if more else ""
    return f"{path}: {where}: {message}{shown}{tail}"


def parse_config(data: Any, path: Path) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e, path)) from None


def load_config(path: Path, *, required: bool) -> Config:
    """Read and validate the config file; a missing optional file means defaults.

    Runs before the event loop starts, so plain blocking reads are fine here.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: no such file") from None
        return Config()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: (top level): must be a JSON object")
    return parse_config(data, path)


def with_overrides(config: Config, **overrides: Any) -> Config:
    """A copy with command-line flags applied (None means: flag not given)."""
    given = {key: value for key, value in overrides.items() if value is not None}
    if not given:
        return config
    merged = config.model_dump(by_alias=True)
    merged.update(given)
    return parse_config(merged, Path("(command line)"))
