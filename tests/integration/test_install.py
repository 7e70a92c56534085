"""MigrateHostSettings and Install against a private root.

Real accounts: a private root's etc/passwd, shadow and group, with users made
by the real ``useradd --prefix`` and ``chpasswd -R``. The generated Nix is
checked by the real ``nix-instantiate --parse`` (the daemon does so itself)
and evaluated with nixpkgs' real lib for its values. No NixOS here:
tests/fake_nixos_rebuild.py stands in for nixos-rebuild, and a script printing
a hardware configuration stands in for nixos-generate-config.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from opctl.client import Client
from opctl.convert import to_variants
from opdbus import names
from opdbus.errors import Conflict, InvalidArgs
from opdbus.models.job import JobRecord, JobState, LogLine
from opdbus.sandbox import PrivateBus
from tests.githost_server import FakeGitHub, serve
from tests.integration.test_rebuild import FAKE
from tests.integration.test_sync import sync_config
from tests.support import CALM, running, until

NIX = shutil.which("nix-instantiate")
pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(NIX is None, reason="nix-instantiate is not installed (make deps)"),
]
NIX_ENV = {**os.environ, "NIX_CONFIG": "build-users-group ="}
HOSTILE_GECOS = 'Eve "the \\quoted" ${builtins.abort "pwned"} $x \\${y} \'\' end'
HARDWARE_NIX = '{ ... }: { boot.initrd.availableKernelModules = [ "virtio_pci" ]; }\n'

# -- a private root with real accounts ---------------------------------------------


def make_root(tmp: Path) -> Path:
    root = tmp / "root"
    etc = root / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\n"
        "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )
    (etc / "group").write_text(
        "root:x:0:\ndaemon:x:1:\ncdrom:x:24:\nsudo:x:27:\naudio:x:29:\n"
        "users:x:100:\nnogroup:x:65534:\n"
    )
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\nsudo:*::\ncdrom:*::\naudio:*::\nusers:*::\n")
    (etc / "shadow").chmod(0o600)
    shutil.copy("/etc/login.defs", etc / "login.defs")
    return root


def useradd(root: Path, name: str, *args: str) -> None:
    subprocess.run(["useradd", "--prefix", str(root), *args, name], check=True, timeout=30,
                   capture_output=True)  # fmt: skip


def chpasswd(root: Path, name: str, password: str) -> None:
    subprocess.run(["chpasswd", "-c", "SHA512", "-R", str(root)], input=f"{name}:{password}\n",
                   text=True, check=True, timeout=30, capture_output=True)  # fmt: skip


def people(root: Path) -> Path:
    useradd(root, "alice", "-m", "-c", "Alice Admin", "-s", "/bin/bash", "-G", "sudo,cdrom,audio")
    useradd(root, "eve", "-c", HOSTILE_GECOS, "-s", "/bin/zsh")
    useradd(root, "bob", "-N", "-g", "users", "-s", "/usr/sbin/nologin")  # no password: locked
    chpasswd(root, "alice", "correct horse")
    chpasswd(root, "eve", 'pa"ss${x}')
    etc = root / "etc"
    (etc / "hostname").write_text("hyper01.example.org\n")
    os.symlink("/usr/share/zoneinfo/Europe/Berlin", etc / "localtime")
    (etc / "default").mkdir()
    (etc / "default" / "locale").write_text('LANG="de_DE.UTF-8"\n')
    (etc / "default" / "keyboard").write_text(
        'XKBMODEL="pc105"\nXKBLAYOUT="de"\nXKBVARIANT="nodeadkeys"\nXKBOPTIONS="ctrl:nocaps"\n'
    )
    (etc / "fstab").write_text(
        "UUID=1111-root / ext4 errors=remount-ro 0 1\n# a comment\n"
        "UUID=2222-swap none swap sw 0 0\n"
    )
    (etc / "nixos").mkdir()
    (etc / "nixos" / "configuration.nix").write_text(
        '{ ... }: {\n  # system.stateVersion = "19.09";\n  system.stateVersion = "24.05";\n}\n'
    )
    (root / "proc").mkdir()
    (root / "proc" / "swaps").write_text(
        "Filename\tType\tSize\tUsed\tPriority\n/dev/sda2\tpartition\t999\t0\t-2\n"
    )
    (root / "proc" / "cmdline").write_text("BOOT_IMAGE=/vmlinuz root=UUID=1111-root ro quiet\n")
    return root


def shadow_hashes(root: Path) -> dict[str, str]:
    rows = [line.split(":") for line in (root / "etc" / "shadow").read_text().splitlines()]
    return {row[0]: row[1] for row in rows}


def uid(root: Path, name: str) -> int:
    for line in (root / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise AssertionError(f"{name} not in passwd")


def nix_eval(expr: str) -> Any:
    assert NIX is not None
    done = subprocess.run([NIX, "--eval", "--strict", "--json", "-E", expr], capture_output=True,
                          text=True, timeout=60, env=NIX_ENV, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def parses(path: Path) -> bool:
    assert NIX is not None
    done = subprocess.run([NIX, "--parse", str(path)], capture_output=True, timeout=60,
                          env=NIX_ENV, check=False)  # fmt: skip
    return done.returncode == 0


def evaluated(lib: Path, path: Path) -> Any:
    stub = '{ bashInteractive = "pkgs.bashInteractive"; zsh = "pkgs.zsh"; fish = "pkgs.fish"; }'
    return nix_eval(f"import {path} {{ lib = import {lib}; pkgs = {stub}; }}")


def tree(path: Path) -> dict[str, tuple[str, bytes]]:
    """Every entry below ``path``: kind and bytes (or link target)."""
    found: dict[str, tuple[str, bytes]] = {}
    for entry in sorted(path.rglob("*")):
        rel = str(entry.relative_to(path))
        if entry.is_symlink():
            found[rel] = ("link", os.readlink(entry).encode())
        elif entry.is_dir():
            found[rel] = ("dir", b"")
        else:
            found[rel] = (oct(entry.stat().st_mode & 0o777), entry.read_bytes())
    return found


# -- calling the daemon --------------------------------------------------------------


async def job(
    client: Client, member: str, lines: list[LogLine] | None = None, **options: Any
) -> JobRecord:
    async def start() -> str:
        (path,) = await client.call(
            names.ROOT_PATH, names.MANAGER_IFACE, member, "a{sv}", [to_variants(options)]
        )
        return str(path)

    return await client.run_job(start, on_log=None if lines is None else lines.append)


def fake_tool(tmp: Path, name: str, body: str) -> Path:
    path = tmp / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def install_config(tmp: Path, **more: Any) -> dict[str, Any]:
    generator = fake_tool(tmp, "nixos-generate-config", f"cat <<'EOF'\n{HARDWARE_NIX}EOF\n")
    return {
        **CALM,
        "rebuild": {"command": str(FAKE), "kill_grace_seconds": 1},
        "install": {
            "generate_config_command": str(generator),
            "reboot_command": [str(fake_tool(tmp, "reboot", f"touch {tmp}/rebooted\n"))],
        },
        **more,
    }


def make_source(tmp: Path, version: str = "1") -> Path:
    source = tmp / f"source-{version}"
    (source / "modules").mkdir(parents=True)
    (source / "flake.nix").write_text(f"{{ outputs = {{ self }}: {{ }}; }} # v{version}\n")
    (source / "modules" / "hyper.nix").write_text(f"{{ ... }}: {{ }} # v{version}\n")
    (source / "scripts").mkdir()
    script = source / "scripts" / "tool.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    os.symlink("modules/hyper.nix", source / "default.nix")
    (source / ".git").mkdir()
    (source / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (source / "result").symlink_to("/nix/store/0000-result")  # a build output: not installed
    return source


# -- MigrateHostSettings -------------------------------------------------------------


async def test_migration_carries_real_users_and_settings_over_as_valid_nix(
    tmp_path: Path, private_bus: PrivateBus, client: Client, nixpkgs_lib: Path
) -> None:
    root = people(make_root(tmp_path))
    hashes = shadow_hashes(root)
    config_dir = tmp_path / "hypervisor" / "configuration"
    async with running(tmp_path, private_bus, **CALM):
        lines: list[LogLine] = []
        done = await job(client, "MigrateHostSettings", lines, invoking_uid=uid(root, "alice"))
        assert done.state is JobState.SUCCEEDED, done.result

        users_file, system_file = config_dir / "users-local.nix", config_dir / "system-local.nix"
        assert stat.S_IMODE(users_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(system_file.stat().st_mode) == 0o600
        assert parses(users_file) and parses(system_file)

        users = evaluated(nixpkgs_lib, users_file)["users"]
        alice, eve, bob = (users["users"][n] for n in ("alice", "eve", "bob"))
        assert eve["description"] == HOSTILE_GECOS  # the string, not what it says
        assert alice["hashedPassword"] == hashes["alice"] and hashes["alice"].startswith("$6$")
        assert eve["hashedPassword"] == hashes["eve"]
        assert bob["hashedPassword"] == hashes["bob"] == "!"
        assert alice["uid"] == uid(root, "alice") and alice["isNormalUser"] is True
        assert alice["home"] == "/home/alice" and alice["shell"] == "pkgs.bashInteractive"
        assert eve["shell"] == "pkgs.zsh" and bob["shell"] == "/run/current-system/sw/bin/nologin"
        # Each gains the hypervisor groups; Debian's sudo is wheel; cdrom does not exist on NixOS.
        assert alice["extraGroups"] == ["audio", "input", "kvm", "libvirtd", "video", "wheel"]
        assert eve["extraGroups"] == ["input", "kvm", "libvirtd", "video", "wheel"]
        assert alice["group"] == "alice" and bob["group"] == "users"
        assert users["groups"]["alice"] == {"gid": uid(root, "alice")}
        assert "bob" not in users["groups"]
        assert "# the user who ran the installer" in users_file.read_text().split('"eve"')[0]

        system = evaluated(nixpkgs_lib, system_file)
        assert system["networking"]["hostName"] == "hyper01"
        assert system["time"]["timeZone"] == "Europe/Berlin"
        assert system["i18n"]["defaultLocale"] == "de_DE.UTF-8"
        assert system["console"]["keyMap"] == "de"
        assert system["services"]["xserver"]["xkb"] == {
            "layout": "de", "variant": "nodeadkeys", "options": "ctrl:nocaps",
        }  # fmt: skip
        assert system["system"]["stateVersion"] == "24.05"  # not the commented-out one
        assert system["swapDevices"]["content"] == [{"device": "/dev/disk/by-uuid/2222-swap"}]
        assert "console" in system and "font" not in system["console"]
        assert "boot" not in system  # no resume device anywhere

        text = "\n".join(line.text for line in lines)
        assert "time zone: Europe/Berlin (from etc/localtime)" in text
        assert "swap devices: /dev/disk/by-uuid/2222-swap (from etc/fstab)" in text
        assert "not found: console font, resume device" in text
        assert "left out: cdrom" in text
        assert f"user alice (uid {uid(root, 'alice')}, the invoking user)" in text
        # Hashes are for the 0600 file only: never in the log or the output anyone may read.
        public = text + json.dumps(done.output)
        for secret in (hashes["alice"], hashes["eve"]):
            assert secret not in public and secret.split("$")[-1] not in public
        assert done.output["users"] == ["alice", "eve", "bob"]
        assert done.output["invoking"] == "alice"
        assert done.output["more_groups"] == {"alice": ["audio"]}
        assert done.output["no_password_hash"] == {"bob": "locked"}

        # A second run finds nothing to change: no write, no backup.
        before = tree(config_dir)
        again = await job(client, "MigrateHostSettings", invoking_uid=uid(root, "alice"))
        assert again.state is JobState.SUCCEEDED, again.result
        assert set(again.output["files"].values()) == {"unchanged"}
        assert tree(config_dir) == before

        # A new user: a dry run says so and writes nothing; a real run keeps the old file.
        useradd(root, "carol", "-s", "/bin/bash")
        dry = await job(client, "MigrateHostSettings", dry_run=True)
        assert dry.output["files"][str(users_file)] == "would be written"
        assert tree(config_dir) == before
        third = await job(client, "MigrateHostSettings", users=["carol"])
        assert third.state is JobState.SUCCEEDED, third.result
        (backup,) = [p for p in config_dir.iterdir() if p.name.startswith("users-local.nix.bak-")]
        assert backup.read_bytes() == before["users-local.nix"][1]
        assert stat.S_IMODE(backup.stat().st_mode) == 0o600
        assert list(evaluated(nixpkgs_lib, users_file)["users"]["users"]) == ["carol"]


async def test_migration_refuses_bad_input_with_named_errors(
    tmp_path: Path, private_bus: PrivateBus, client: Client
) -> None:
    people(make_root(tmp_path))
    async with running(tmp_path, private_bus, **CALM):

        async def call(**options: Any) -> str:
            (path,) = await client.call(
                names.ROOT_PATH, names.MANAGER_IFACE, "MigrateHostSettings", "a{sv}",
                [to_variants(options)],
            )  # fmt: skip
            return str(path)

        for options, words in (
            ({"colour": "red"}, "colour"),
            ({"hostname": "my host"}, "not a host name"),
            ({"hostname": "h" * 64}, "not a host name"),
            ({"users": ["alice", "bad name!"]}, "not a user name"),
        ):
            with pytest.raises(InvalidArgs, match=words):
                await call(**options)
        # A user that is not a person (root) or not there at all: the job names them.
        done = await job(client, "MigrateHostSettings", users=["alice", "root", "zed"])
        assert done.state is JobState.FAILED
        assert done.error_name == InvalidArgs.dbus_name and "root, zed" in done.result
        assert not (tmp_path / "hypervisor" / "configuration" / "users-local.nix").exists()


# -- Install -------------------------------------------------------------------------


async def test_install_runs_its_phases_in_order_and_again_changes_nothing(
    tmp_path: Path,
    private_bus: PrivateBus,
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = people(make_root(tmp_path))
    source = make_source(tmp_path)
    calls = tmp_path / "rebuild-calls"
    monkeypatch.setenv("FAKE_REBUILD_CALLS", str(calls))
    src, flake = tmp_path / "hypervisor" / "src", tmp_path / "nixos"
    fake = FakeGitHub()  # upstream holds what the source holds: the update check finds nothing
    fake.commit(
        {
            "flake.nix": ("100644", (source / "flake.nix").read_bytes()),
            "modules/hyper.nix": ("100644", (source / "modules" / "hyper.nix").read_bytes()),
            "scripts/tool.sh": ("100755", (source / "scripts" / "tool.sh").read_bytes()),
            "default.nix": ("120000", b"modules/hyper.nix"),
        }
    )
    runner, url = await serve(fake)
    try:
        async with running(tmp_path, private_bus, **install_config(tmp_path, **sync_config(url))):
            lines: list[LogLine] = []
            done = await job(
                client, "Install", lines, source=str(source), fast=True, reboot=True,
                invoking_uid=uid(root, "alice"),
            )  # fmt: skip
            assert done.state is JobState.SUCCEEDED, done.result
            phases = [line.text for line in lines if line.text.startswith("== ")]
            assert phases == [
                f"== 1/8 copy {source} to {src}",
                f"== 2/8 link {flake / 'flake.nix'}",
                "== 3/8 check for updates (smart sync)",
                "== 4/8 detect the hardware",
                "== 5/8 migrate users and settings",
                "== 6/8 nixos-rebuild test",
                "== 7/8 nixos-rebuild switch",
                "== 8/8 reboot",
            ]
            text = "\n".join(line.text for line in lines)
            assert "CPU: " in text  # the machine's summary
            assert done.result == "installed for host hyper01 (nixos-rebuild switch)"
            runs = calls.read_text().splitlines()
            assert [run.split()[0] for run in runs] == ["test", "switch"]
            assert all(f"--flake {flake}#hyper01" in run for run in runs)
            assert "--option http-connections 25" in runs[0]
            assert (tmp_path / "rebooted").exists()

            # The source went in without its .git; the smart sync then ran against it.
            installed = tree(src)
            assert ".git" not in installed and "result" not in installed
            assert installed["default.nix"] == (
                "link", b"modules/hyper.nix",
            )  # fmt: skip
            assert installed["scripts/tool.sh"][0] == "0o755"
            assert os.readlink(flake / "flake.nix") == str(src / "flake.nix")
            assert (flake / "hardware-configuration.nix").read_text() == HARDWARE_NIX
            assert (tmp_path / "hypervisor" / "configuration" / "users-local.nix").exists()

            # A second run with the same source: nothing written, no backup made.
            everything = {d: tree(d) for d in (src, flake, tmp_path / "hypervisor")}
            (tmp_path / "rebooted").unlink()
            again = await job(
                client, "Install", source=str(source), skip_update_check=True,
                invoking_uid=uid(root, "alice"),
            )  # fmt: skip
            assert again.state is JobState.SUCCEEDED, again.result
            assert {d: tree(d) for d in everything} == everything
            assert again.output["backups"] == []
            assert not (tmp_path / "rebooted").exists()  # not asked this time
    finally:
        await runner.cleanup()


def old_host(tmp: Path) -> dict[Path, dict[str, tuple[str, bytes]]]:
    """An earlier installation: its tree, a flake.nix of its own, a users file."""
    src, flake, conf = (
        tmp / "hypervisor" / "src",
        tmp / "nixos",
        tmp / "hypervisor" / "configuration",
    )
    src.mkdir(parents=True)
    (src / "flake.nix").write_text("# the old tree\n")
    (src / "var").mkdir()  # the sync's and the installer's "never touched"
    (src / "var" / "data").write_text("the host's own\n")
    flake.mkdir()
    (flake / "flake.nix").write_text("# the host's own flake\n")
    conf.mkdir()
    (conf / "users-local.nix").write_text("{ ... }: { } # old\n")
    return {d: tree(d) for d in (src, flake, conf)}


async def test_a_failed_rebuild_puts_back_every_file_it_replaced(
    tmp_path: Path, private_bus: PrivateBus, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    people(make_root(tmp_path))
    source = make_source(tmp_path)
    before = old_host(tmp_path)
    monkeypatch.setenv("FAKE_REBUILD_FAIL_ON", "switch")
    async with running(tmp_path, private_bus, **install_config(tmp_path)):
        lines: list[LogLine] = []
        done = await job(
            client, "Install", lines, source=str(source), force=True, skip_update_check=True,
            reboot=True,
        )  # fmt: skip
        assert done.state is JobState.FAILED
        assert done.result.startswith("step 6/7 (nixos-rebuild switch) failed: nixos-rebuild")
        assert {d: tree(d) for d in before} == before  # and hardware-configuration.nix is gone
        assert not (tmp_path / "nixos" / "hardware-configuration.nix").exists()
        assert not (tmp_path / "rebooted").exists()
        text = "\n".join(line.text for line in lines)
        assert "putting back what this install replaced:" in text
        assert not list((tmp_path / "hypervisor").glob("*.bak-*"))


async def test_a_cancel_stops_between_phases_and_puts_the_files_back(
    tmp_path: Path, private_bus: PrivateBus, client: Client
) -> None:
    people(make_root(tmp_path))
    source = make_source(tmp_path)
    before = old_host(tmp_path)
    started = tmp_path / "generating"
    slow = fake_tool(
        tmp_path, "slow-generate", f"touch {started}\nsleep 1.5\ncat <<'EOF'\n{HARDWARE_NIX}EOF\n"
    )
    config = install_config(tmp_path)
    config["install"]["generate_config_command"] = str(slow)
    async with running(tmp_path, private_bus, **config):
        lines: list[LogLine] = []
        run = asyncio.create_task(
            job(client, "Install", lines, source=str(source), force=True, skip_update_check=True)
        )

        async def generating() -> bool:
            return started.exists()

        await until(generating, timeout=30)
        ((job_path,),) = await client.call(names.ROOT_PATH, names.MANAGER_IFACE, "ListJobs")
        await client.cancel(str(job_path))
        done = await run
        assert done.state is JobState.CANCELLED
        texts = [line.text for line in lines]
        # The hardware phase ran to its end; the next phase never began.
        hardware = texts.index(f"{tmp_path / 'nixos' / 'hardware-configuration.nix'}: written")
        assert hardware < texts.index("putting back what this install replaced:")
        assert not any(t.startswith("== 4/") for t in texts)
        assert {d: tree(d) for d in before} == before
        assert not (tmp_path / "nixos" / "hardware-configuration.nix").exists()


async def test_install_refuses_bad_input_before_any_job(
    tmp_path: Path, private_bus: PrivateBus, client: Client
) -> None:
    source = make_source(tmp_path)
    old_host(tmp_path)
    no_flake = tmp_path / "empty"
    no_flake.mkdir()
    async with running(tmp_path, private_bus, **install_config(tmp_path)):

        async def call(**options: Any) -> None:
            await client.call(
                names.ROOT_PATH, names.MANAGER_IFACE, "Install", "a{sv}", [to_variants(options)]
            )

        for options, words in (
            ({}, "source is required"),
            ({"source": str(source), "fast": "yes"}, "fast"),
            ({"source": str(source), "hostname": "my host"}, "not a host name"),
            ({"source": str(source), "hostname": "a" * 64}, "not a host name"),
            ({"source": str(tmp_path / "nowhere")}, "does not exist"),
            ({"source": "relative/path"}, "absolute path"),
            ({"source": str(no_flake)}, "has no flake.nix"),
            ({"source": str(source), "action": "boot"}, "action"),
            ({"source": str(source), "action": "test", "reboot": True}, "reboot needs a switch"),
        ):
            with pytest.raises(InvalidArgs, match=words):
                await call(**options)
        # An installed tree that differs is replaced only when asked.
        with pytest.raises(Conflict, match="pass force"):
            await call(source=str(source))
        jobs = await client.call(names.ROOT_PATH, names.MANAGER_IFACE, "ListJobs", "", [])
        assert jobs == [[]]


async def test_a_file_that_does_not_parse_replaces_nothing(
    tmp_path: Path, private_bus: PrivateBus, client: Client
) -> None:
    # A stand-in for a nix-instantiate that rejects the users file (the real
    # one accepts what we write: this checks that a rejection keeps the old files).
    checker = fake_tool(
        tmp_path,
        "nix-instantiate",
        'for f; do case "$f" in *users-local*)\n'
        '  echo "error: syntax error, unexpected end of file" >&2; exit 1;; esac; done\n',
    )
    people(make_root(tmp_path))
    before = old_host(tmp_path)
    conf = tmp_path / "hypervisor" / "configuration"
    async with running(tmp_path, private_bus, **CALM, install={"parse_command": str(checker)}):
        done = await job(client, "MigrateHostSettings")
        assert done.state is JobState.FAILED and done.error_name == "org.opdbus.Error.Failed"
        assert done.result == (
            "users-local.nix as generated does not parse "
            "(error: syntax error, unexpected end of file); nothing replaced"
        )
        assert tree(conf) == before[conf]  # no system-local.nix either, no temporary files
