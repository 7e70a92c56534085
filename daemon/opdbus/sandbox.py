"""``op-dbusd --sandbox DIR``: a complete op-dbus in one directory, for trying and testing.

It starts a private ``dbus-daemon`` carrying the project's own bus policy
(plus, when not run as root, a grant for the invoking user), keeps config,
state and audit under DIR, points every backend at sandbox-local places, and
writes the bus address to ``DIR/bus-address`` once org.opdbus is owned.

The helpers here are synchronous on purpose: they run before the event loop
starts and after it ends (and the test fixtures use them to start buses).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from opdbus.backends.files import atomic_write
from opdbus.backends.process import end_sync, popen
from opdbus.config import Config, load_config, with_overrides
from opdbus.sandbox_ovs import PrivateOvs, ovs_installed, start_private_ovs

POLICY_FILE = "org.opdbus.conf"
# Set once op-dbusd has put itself into a network namespace of its own.
NETNS_ENV = "OPDBUS_SANDBOX_NETNS"
POLKIT_BUS_POLICY = Path("/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf")

# Debian's system.conf default policy, verbatim in spirit: deny by default,
# the bus driver itself is reachable, replies and signals flow.
_DEFAULT_POLICY = """
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.DBus" send_member="UpdateActivationEnvironment"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.DBus.Debug.Stats"/>
  </policy>
  <!-- As on the system bus: root may monitor (busctl monitor, dbus-monitor). -->
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>"""

# The default of 128 pending replies per connection stops a client with 2000
# calls in flight; these are the limits the load tests need.
LIMITS = {
    "max_replies_per_connection": 50000,
    "max_connections_per_user": 4096,
    "max_match_rules_per_connection": 4096,
}


def find_policy_dir() -> Path:
    """Where the shipped dbus-policy/ files are ($OPDBUS_POLICY_DIR, source tree, installed)."""
    candidates = [
        os.environ.get("OPDBUS_POLICY_DIR"),
        str(Path(__file__).resolve().parents[2] / "dbus-policy"),
        f"{sys.prefix}/share/op-dbus/dbus-policy",
        "/usr/share/op-dbus/dbus-policy",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / POLICY_FILE).is_file():
            return Path(candidate)
    raise FileNotFoundError(
        f"cannot find {POLICY_FILE}: set OPDBUS_POLICY_DIR to the project's dbus-policy/ directory"
    )


def bus_config(socket_path: Path, policy_dir: Path) -> str:
    limits = "\n".join(f'  <limit name="{name}">{value}</limit>' for name, value in LIMITS.items())
    return f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={escape(str(socket_path))}</listen>
  <auth>EXTERNAL</auth>
{_DEFAULT_POLICY}
  <includedir>{escape(str(policy_dir))}</includedir>
{limits}
</busconfig>
"""


def user_grant(user: str, name: str = "org.opdbus", *, own: bool = True) -> str:
    """A policy file letting one user call (and, with ``own``, own) a bus name."""
    rules = [f'<allow own="{name}"/>'] if own else []
    rules.append(f'<allow send_destination="{name}"/>')
    body = "\n".join(f"    {rule}" for rule in rules)
    return f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy user={quoteattr(user)}>
{body}
  </policy>
</busconfig>
"""


@dataclass
class PrivateBus:
    """A dbus-daemon we started and must stop."""

    address: str
    socket_path: Path
    policy_dir: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        end_sync(self.process, wait=5)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()


def _stop_containers_in(lxcpath: Path) -> None:
    for config in sorted(lxcpath.glob("*/config")):
        subprocess.run(
            ["lxc-stop", "-P", str(lxcpath), "-n", config.parent.name, "-k"],
            capture_output=True,
            timeout=30,
            check=False,
        )


def _opctl_command() -> str:
    """How to run opctl from here: its name when it is on PATH, else its full path."""
    beside = Path(sys.executable).parent / "opctl"
    found = shutil.which("opctl")
    if found and Path(found).resolve() == beside.resolve():
        return "opctl"
    return str(beside) if beside.exists() else "opctl"


def start_private_bus(directory: Path, *, policy_files: dict[str, str] | None = None) -> PrivateBus:
    """Start dbus-daemon in ``directory`` with the project's policy (plus extra files)."""
    binary = shutil.which("dbus-daemon")
    if binary is None:
        raise FileNotFoundError("dbus-daemon is not installed (Debian: apt install dbus-daemon)")
    directory.mkdir(parents=True, exist_ok=True)
    policy_dir = directory / "policy.d"
    policy_dir.mkdir(exist_ok=True)
    shutil.copyfile(find_policy_dir() / POLICY_FILE, policy_dir / POLICY_FILE)
    for name, text in (policy_files or {}).items():
        (policy_dir / name).write_text(text)
    socket_path = directory / "bus.sock"
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()
    config_path = directory / "bus.conf"
    config_path.write_text(bus_config(socket_path, policy_dir))
    # dbus-daemon's own warnings (an unknown group in a policy, fd limits)
    # go to a log file beside the bus instead of the terminal.
    with open(directory / "dbus-daemon.log", "ab") as errors:
        # Its own session (popen): Ctrl-C on the terminal must reach op-dbusd
        # only, which then releases its name before the sandbox stops the bus.
        process = popen(
            [
                binary,
                f"--config-file={config_path}",
                "--nofork",
                "--nopidfile",
                "--print-address=1",
            ],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            stderr=errors,
        )
    assert process.stdout is not None
    line = process.stdout.readline().decode().strip()
    process.stdout.close()
    if not line:
        end_sync(process, wait=5)
        raise RuntimeError(f"dbus-daemon exited with status {process.returncode} before listening")
    return PrivateBus(line, socket_path, policy_dir, process)


def _accepts(path: Path) -> bool:
    """Whether something listens on this unix socket (a stale file does not)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


class Sandbox:
    def __init__(self, directory: Path, *, host_network: bool = False) -> None:
        self.dir = directory.resolve()
        self.private_network = os.environ.get(NETNS_ENV) == "1" and not host_network
        self.bus: PrivateBus | None = None
        self.ovs: PrivateOvs | None = None
        self.notes: list[str] = []  # what the sandbox could not start, and why
        self._announced = False  # bus-address is ours to remove only once we wrote it
        if self.private_network:
            # Ours alone: its loopback is down until someone brings it up.
            subprocess.run(["ip", "link", "set", "lo", "up"], check=False, capture_output=True)
            self.notes.append(
                "network: a namespace of its own (bridges and containers stay inside; "
                "--host-network to share the host's)"
            )
        elif host_network:
            self.notes.append(
                "NETWORK: --host-network -- bridges, addresses and routes made here land "
                "on THIS HOST's network"
            )
        elif os.geteuid() != 0:
            self.notes.append(
                "network: the host's, read-only (not root: no bridges, no containers)"
            )

    @property
    def config_path(self) -> Path:
        return self.dir / "config.json"

    def start_bus(self) -> PrivateBus:
        self.dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        if _accepts(self.dir / "bus" / "bus.sock"):
            # Refused: nothing of the running sandbox is touched (its
            # bus-address included).
            raise RuntimeError(f"a sandbox is already running in {self.dir}")
        # A socket nobody answers on is a sandbox that died: its processes
        # went with it (backends.process), so only files are left to replace.
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "bus-address").unlink()
        extra: dict[str, str] = {}
        if os.geteuid() != 0:
            extra["sandbox-user.conf"] = user_grant(getpass.getuser())
        if POLKIT_BUS_POLICY.is_file():
            extra[POLKIT_BUS_POLICY.name] = POLKIT_BUS_POLICY.read_text()
        self.bus = start_private_bus(self.dir / "bus", policy_files=extra)
        return self.bus

    def start_ovs(self) -> None:
        """Our own ovsdb-server and ovs-vswitchd, when Open vSwitch is installed and we are root."""
        if not ovs_installed():
            self.notes.append("Open vSwitch: not installed (apt install openvswitch-switch)")
        elif os.geteuid() != 0:
            self.notes.append("Open vSwitch: not started (ovs-vswitchd needs root)")
        else:
            self.ovs = start_private_ovs(self.dir / "ovs")

    def config(self, state_dir: Path | None) -> Config:
        """The sandbox's config: DIR/config.json if present, with sandbox-local paths."""
        base = load_config(self.config_path, required=False)
        assert self.bus is not None
        return with_overrides(
            base,
            state_dir=str(state_dir or self.dir / "state"),
            auth={**base.auth.model_dump(), "admin_uids": [*base.auth.admin_uids, os.geteuid()]},
            paths={
                **base.paths.model_dump(mode="json"),
                "source_dir": str(self.dir / "hypervisor" / "src"),
                "flake_dir": str(self.dir / "nixos"),
                "configuration_dir": str(self.dir / "hypervisor" / "configuration"),
                "bus_policy": [str(self.bus.policy_dir / POLICY_FILE)],
            },
            libvirt={"uri": "test:///default"},
            # netdev: the userspace datapath works without the kernel module.
            ovsdb={
                **base.ovsdb.model_dump(),
                "remote": f"unix:{self.dir / 'ovs' / 'db.sock'}",
                "datapath_type": "netdev",
            },
            lxc={"path": str(self.dir / "lxc")},
            # Install --reboot in a sandbox says so instead of rebooting the host.
            install={
                **base.install.model_dump(mode="json"),
                "reboot_command": ["echo", "op-dbusd --sandbox does not reboot the host"],
            },
            state={**base.state.model_dump(mode="json"), "file": str(self.dir / "state.json")},
        )

    def announce(self, address: str) -> None:
        """Write DIR/bus-address (the daemon owns org.opdbus now) and say how to reach it."""
        atomic_write(self.dir / "bus-address", f"{address}\n".encode(), mode=0o644, sync=False)
        self._announced = True
        opctl = _opctl_command()
        print(
            f"op-dbusd sandbox ready in {self.dir}\n"
            f"  bus address: {address}\n"
            f"  try:  {opctl} --bus '{address}' status\n"
            f"        export OPDBUS_BUS_ADDRESS='{address}'; {opctl} validate\n"
            f"        busctl --address='{address}' introspect org.opdbus /org/opdbus\n"
            + "".join(f"  note: {note}\n" for note in self.notes)
            + "  stop:  Ctrl-C",
            flush=True,
        )

    def _stop_containers(self) -> None:
        """The sandbox's containers end with it (their veths are in its network)."""
        if shutil.which("lxc-stop") is not None:
            _stop_containers_in(self.dir / "lxc")

    def stop(self) -> None:
        if self._announced:
            with contextlib.suppress(FileNotFoundError):
                (self.dir / "bus-address").unlink()
        self._stop_containers()
        if self.ovs is not None:
            self.ovs.stop()
            self.ovs = None
        if self.bus is not None:
            self.bus.stop()
            self.bus = None
