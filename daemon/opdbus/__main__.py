"""``op-dbusd``: parse the flags, load the config, run the daemon."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from opdbus.config import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_STATE_DIR,
    ConfigError,
    Mode,
    load_config,
    with_overrides,
)

if TYPE_CHECKING:
    from opdbus.sandbox import Sandbox

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


class OneLineFormatter(logging.Formatter):
    """One line per event, tracebacks included (journald and grep both want that).

    Under systemd ($JOURNAL_STREAM set) the line starts with the syslog
    priority ``<N>`` and no timestamp: journald adds its own.
    """

    PRIORITY: ClassVar[dict[int, int]] = {
        logging.DEBUG: 7,
        logging.INFO: 6,
        logging.WARNING: 4,
        logging.ERROR: 3,
        logging.CRITICAL: 2,
    }

    def __init__(self, journal: bool) -> None:
        super().__init__(
            "%(name)s: %(message)s"
            if journal
            else "%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        self._journal = journal

    def format(self, record: logging.LogRecord) -> str:
        exc_info, record.exc_info, record.exc_text = record.exc_info, None, None
        line = super().format(record)
        if exc_info and exc_info[1] is not None:
            frames = traceback.format_exception(*exc_info)
            line += " | " + " | ".join(part.strip().replace("\n", " | ") for part in frames)
        record.exc_info = exc_info
        if self._journal:
            line = f"<{self.PRIORITY.get(record.levelno, 6)}>{line}"
        return line.replace("\n", " | ")


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(journal="JOURNAL_STREAM" in os.environ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="op-dbusd",
        description="op-dbus daemon: owns VMs, OVS bridges, LXC containers and host jobs, "
        "and publishes them on D-Bus as org.opdbus.",
        epilog="Try it without touching the host:  op-dbusd --sandbox ./sandbox",
    )
    p.add_argument(
        "--bus",
        default="system",
        metavar="system|session|ADDRESS",
        help="bus to serve on (default: system)",
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help=f"config file (default: {DEFAULT_CONFIG_PATH}; missing = built-in defaults)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help=f"jobs and audit log (default: {DEFAULT_STATE_DIR}, or the config's)",
    )
    p.add_argument(
        "--mode",
        choices=[mode.value for mode in Mode],
        help="backends to run: agent (D-Bus, systemd), standalone (+ OVS), full (+ LXC, VMs)",
    )
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="default: info, or the config's",
    )
    p.add_argument(
        "--check-state",
        type=Path,
        metavar="FILE",
        help="check a desired-state document (what NixOS's stateConfig writes) against the "
        "schema and --mode, print what it holds, and exit: 0 good, 2 not",
    )
    p.add_argument(
        "--host-network",
        action="store_true",
        help="with --sandbox: share the host's network namespace (bridges, addresses and "
        "routes it makes land on the host) instead of its own",
    )
    p.add_argument(
        "--sandbox",
        type=Path,
        metavar="DIR",
        help="run self-contained in DIR: a private bus with the project's policy, "
        "state under DIR, test backends; prints how to connect",
    )
    return p


def check_state(path: Path, mode: Mode | None) -> int:
    """``--check-state``: the daemon's own reading of a document, without a daemon."""
    from opdbus.errors import OpdbusError
    from opdbus.kinds import provider_modes
    from opdbus.models.state import parse_state

    try:
        text = path.read_text(encoding="utf-8")
        doc = parse_state(text, str(path))
    except OSError as e:
        print(f"op-dbusd: {path}: cannot read: {e.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    except OpdbusError as e:
        print(f"op-dbusd: {e.message}", file=sys.stderr)
        return EXIT_CONFIG
    sections = doc.sections()
    if mode is not None:
        modes = provider_modes()
        off = [name for name in sections if mode not in modes.get(name, frozenset())]
        if off:
            print(
                f"op-dbusd: {path}: {', '.join(off)}: off in {mode.value} mode "
                f"(served in: {', '.join(m.value for m in Mode if m in modes[off[0]])})",
                file=sys.stderr,
            )
            return EXIT_CONFIG
    counts = {
        "systemd": ("unit", len(doc.systemd.units) if doc.systemd else 0),
        "net": ("bridge", len(doc.net.interfaces) if doc.net else 0),
        "lxc": ("container", len(doc.lxc.containers) if doc.lxc else 0),
        "vms": ("VM", len(doc.vms.domains) if doc.vms else 0),
    }
    held = [
        f"{n} {what}{'' if n == 1 else 's'}"
        for name, (what, n) in counts.items()
        if name in sections
    ]
    print(f"{path}: good: {', '.join(held) or 'empty'}; digest {doc.digest()[:12]}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.check_state is not None:
        return check_state(args.check_state, Mode(args.mode) if args.mode else None)
    # The event loop answers every client; a thread doing CPU work (checking a
    # big document) hands the GIL over after this long instead of 5 ms.
    sys.setswitchinterval(0.001)
    from opdbus.sandbox import NETNS_ENV, Sandbox

    own_network = args.sandbox is not None and not args.host_network and os.geteuid() == 0
    if own_network and os.environ.get(NETNS_ENV) != "1":
        # Into a network namespace of its own, same pid (signals still reach
        # us): nothing the sandbox makes -- bridges, addresses, routes,
        # containers' veths -- lands on the host, and all of it goes with us.
        # A private mount namespace with a fresh sysfs, so /sys/class/net (where
        # LXC looks bridges up) shows this network, not the host's.
        os.environ[NETNS_ENV] = "1"
        argv_now = sys.argv[1:] if argv is None else argv
        os.execvp("unshare", ["unshare", "--net", "--mount", "--propagation", "private", "--",
                              "sh", "-c", 'mount -t sysfs sysfs /sys && exec "$@"', "sh",
                              sys.executable, "-m", "opdbus", *argv_now])  # fmt: skip
    sandbox = Sandbox(args.sandbox, host_network=args.host_network) if args.sandbox else None
    try:
        return _run(args, sandbox)
    finally:
        if sandbox is not None:
            sandbox.stop()


def _run(args: argparse.Namespace, sandbox: Sandbox | None) -> int:
    address: str | None = None
    try:
        if sandbox is not None:
            setup_logging(args.log_level or "info")
            address = sandbox.start_bus().address
            sandbox.start_ovs()
            config_path = args.config or sandbox.config_path
            config = sandbox.config(args.state_dir)
        else:
            config_path = args.config or DEFAULT_CONFIG_PATH
            config = load_config(config_path, required=args.config is not None)
            if args.state_dir is not None:
                config = with_overrides(config, state_dir=str(args.state_dir))
        config = with_overrides(config, mode=args.mode, log_level=args.log_level)
    except ConfigError as e:
        print(f"op-dbusd: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except (OSError, RuntimeError) as e:
        print(f"op-dbusd: cannot start the sandbox: {e}", file=sys.stderr)
        return EXIT_FAILED

    setup_logging(config.log_level)
    from opdbus.bus.server import NameTaken, resolve_bus_address
    from opdbus.daemon import Daemon, StartupError

    daemon = Daemon(
        config, bus_address=address or resolve_bus_address(args.bus), config_path=config_path
    )
    if sandbox is not None:
        announce_in = sandbox

        async def announce() -> None:
            await asyncio.to_thread(announce_in.announce, daemon.server.address)

        daemon.ready_hooks.append(announce)
    try:
        return asyncio.run(daemon.run())
    except (NameTaken, ConnectionError, StartupError) as e:
        print(f"op-dbusd: {e}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
