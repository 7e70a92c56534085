"""The installer's readers of host files, and Nix string literals, on their own.

The other half of each check is real: the strings are evaluated by the real
nix-instantiate, the files are in the formats Debian and NixOS write.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from opdbus.backends import hostfiles
from opdbus.errors import Failed, InvalidArgs
from opdbus.models.install import Found
from opdbus.services.migrate import nix_string

NIX = shutil.which("nix-instantiate")
NIX_ENV = {**os.environ, "NIX_CONFIG": "build-users-group ="}

HOSTILE = [
    "plain",
    "",
    'say "hi"',
    '${builtins.abort "x"}',
    "$${x}",
    "\\${x}",
    "back\\slash\\",
    "two\nlines\r\tand a tab",
    "'' nix's other quote ''${x}",
    "unicode: Grüße ☃",
    "$",
    "\\",
]


@pytest.mark.skipif(NIX is None, reason="nix-instantiate is not installed (make deps)")
def test_nix_strings_evaluate_to_exactly_what_was_written() -> None:
    assert NIX is not None
    expr = "[ " + " ".join(nix_string(text) for text in HOSTILE) + " ]"
    done = subprocess.run([NIX, "--eval", "--strict", "--json", "-E", expr], capture_output=True,
                          text=True, timeout=60, env=NIX_ENV, check=True)  # fmt: skip
    assert json.loads(done.stdout) == HOSTILE


def test_a_nul_byte_is_refused() -> None:
    with pytest.raises(InvalidArgs, match="NUL"):
        nix_string("a\0b")


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_systemd_style_host_is_read_from_its_own_files(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "etc/hostname": "node7\n",
            "etc/timezone": "America/New_York\n",  # no etc/localtime link
            "etc/locale.conf": "LANG=en_GB.UTF-8\nLC_TIME=C\n",
            "etc/vconsole.conf": "KEYMAP=uk\nFONT=ter-v16n\n",
            "etc/X11/xorg.conf.d/00-keyboard.conf": (
                'Section "InputClass"\n  Option "XkbLayout" "gb"\n'
                '  Option "XkbOptions" "compose:ralt"\nEndSection\n'
            ),
            "etc/fstab": "LABEL=swap none swap defaults 0 0\n",
            "proc/cmdline": "root=/dev/sda1 resume=PARTUUID=abc-1 quiet\n",
        },
    )
    settings = hostfiles.read_settings(root)
    assert settings.hostname == Found(value="node7", source="etc/hostname")
    assert settings.time_zone == Found(value="America/New_York", source="etc/timezone")
    assert settings.locale == Found(value="en_GB.UTF-8", source="etc/locale.conf")
    assert settings.console_keymap == Found(value="uk", source="etc/vconsole.conf")
    assert settings.console_font == Found(value="ter-v16n", source="etc/vconsole.conf")
    xorg = "etc/X11/xorg.conf.d/00-keyboard.conf"
    assert settings.xkb_layout == Found(value="gb", source=xorg)
    assert settings.xkb_options == Found(value="compose:ralt", source=xorg)
    assert settings.swap_devices == [Found(value="/dev/disk/by-label/swap", source="etc/fstab")]
    assert settings.resume_device == Found(
        value="/dev/disk/by-partuuid/abc-1", source="proc/cmdline"
    )
    assert settings.missing() == ["xkb_variant", "state_version"]


def test_a_nixos_host_falls_back_to_its_configuration_nix(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "etc/nixos/configuration.nix": (
                "{ config, pkgs, ... }:\n{\n"
                '  networking.hostName = "nixhost";\n'
                '  time.timeZone = "Europe/Paris";\n'
                '  # i18n.defaultLocale = "xx_XX.UTF-8";\n'
                '  i18n.defaultLocale = "fr_FR.UTF-8";\n'
                '  console.keyMap = "fr";\n'
                '  services.xserver.xkb.layout = "fr";\n'
                '  boot.resumeDevice = "/dev/disk/by-uuid/feed";\n'
                '  system.stateVersion = "23.11"; # Did you read the comment?\n'
                '  users.users.x.description = "${config.networking.hostName}";\n'
                "}\n"
            ),
            "etc/hostname": "not a valid name!\n",
            # zram is made at boot: not a swap device to keep.
            "proc/swaps": "Filename Type Size Used Priority\n/dev/zram0 partition 1 0 100\n"
            "/swapfile file 1024 0 -2\n",
            "etc/initramfs-tools/conf.d/resume": "RESUME=none\n",
        },
    )
    settings = hostfiles.read_settings(root)
    nixos = "etc/nixos/configuration.nix"
    assert settings.hostname == Found(value="nixhost", source=nixos)
    assert settings.time_zone == Found(value="Europe/Paris", source=nixos)
    assert settings.locale == Found(value="fr_FR.UTF-8", source=nixos)  # not the comment
    assert settings.console_keymap == Found(value="fr", source=nixos)
    assert settings.xkb_layout == Found(value="fr", source=nixos)
    assert settings.state_version == Found(value="23.11", source=nixos)
    assert settings.resume_device == Found(value="/dev/disk/by-uuid/feed", source=nixos)
    assert settings.swap_devices == [Found(value="/swapfile", source="proc/swaps")]


def test_accounts_follow_login_defs_and_name_what_is_not_there(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "etc/login.defs": "# comment\nUID_MIN 2000\nUID_MAX   2999\n",
            "etc/passwd": "root:x:0:0::/root:/bin/sh\nold:x:1500:100::/home/old:/bin/sh\n"
            "new:x:2001:2001:New,,,:/home/new:/usr/bin/fish\n+::::::\nshort:x:2002\n",
            "etc/group": "users:x:100:\nnew:x:2001:\nteam:x:2500:new\nplugdev:x:46:new\n",
        },
    )
    accounts = hostfiles.read_accounts(root, None, invoking_uid=2001)
    (user,) = accounts.users  # 1500 is below UID_MIN; malformed lines are skipped
    assert (user.name, user.description, user.invoking) == ("new", "New", True)
    assert user.password_hash is None  # no shadow file at all
    assert user.groups == ("input", "kvm", "libvirtd", "team", "video", "wheel")
    assert accounts.groups == {"new": 2001, "team": 2500}
    assert accounts.notes == ["system groups NixOS does not have, left out: plugdev"]
    with pytest.raises(InvalidArgs, match=r"from 2000 to 2999 .*: old, ghost"):
        hostfiles.read_accounts(root, ["new", "old", "ghost"], invoking_uid=None)


def test_an_unreadable_account_file_is_a_clear_failure_not_a_guess(tmp_path: Path) -> None:
    # Root reads everything, so "unreadable" is a symlink loop here (ELOOP): an
    # error that is not "missing", as EACCES is for a daemon that is not root.
    root = write(tmp_path, {"etc/passwd": "u:x:1000:1000::/home/u:/bin/sh\n"})
    assert hostfiles.read_accounts(root, None, None).users[0].password_hash is None  # no file
    shadow = root / "etc" / "shadow"
    shadow.symlink_to(shadow)
    with pytest.raises(
        Failed, match=r"cannot read .*etc/shadow: Too many levels of symbolic links"
    ):
        hostfiles.read_accounts(root, None, None)
