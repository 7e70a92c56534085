#!/usr/bin/env python3
"""A stand-in for nixos-rebuild (no NixOS here): realistic output over time, a chosen exit.

FAKE_REBUILD_STATUS   exit status (default 0)
FAKE_REBUILD_DELAY    seconds between lines (default 0.01)
FAKE_REBUILD_LINES    extra "building" lines (default 20)
FAKE_REBUILD_RECORD   a file to write argv (one per line) and the pid of a child it starts
FAKE_REBUILD_STAMP    when set, each line starts with the time it was printed ("@<epoch> ")
FAKE_REBUILD_CALLS    a file each run appends its argv to (one line per run)
FAKE_REBUILD_FAIL_ON  an action that fails with status 1 (the others succeed)
"""

import os
import subprocess
import sys
import time

status = int(os.environ.get("FAKE_REBUILD_STATUS", "0"))
delay = float(os.environ.get("FAKE_REBUILD_DELAY", "0.01"))
extra = int(os.environ.get("FAKE_REBUILD_LINES", "20"))
record = os.environ.get("FAKE_REBUILD_RECORD")
stamp = bool(os.environ.get("FAKE_REBUILD_STAMP"))
calls = os.environ.get("FAKE_REBUILD_CALLS")
if calls:
    with open(calls, "a") as f:
        f.write(" ".join(sys.argv[1:]) + "\n")
if len(sys.argv) > 1 and sys.argv[1] == os.environ.get("FAKE_REBUILD_FAIL_ON"):
    status = 1

child = subprocess.Popen(["sleep", "300"])  # like nix's builders: must die with us
if record:
    with open(record, "w") as f:
        f.write("\n".join(sys.argv[1:]) + f"\nchild={child.pid}\n")

action = sys.argv[1] if len(sys.argv) > 1 else "?"
lines = [
    "building the system configuration...",
    "these 3 derivations will be built:",
    "  /nix/store/4x1q9kq0mvr3f2ng1i4n0aab2n3l2y9k-etc.drv",
    "  /nix/store/b1w5wq6f0v0c2qzv6n1r3xw5z6s8k5d3-nixos-system-hyper-24.05.drv",
    *(f"building '/nix/store/{i:032d}-unit-{i}.drv'..." for i in range(extra)),
]
if action in ("switch", "test"):
    lines += [
        "activating the configuration...",
        "setting up /etc...",
        "reloading user units for root...",
    ]
if status != 0:
    lines += [f"error: builder for '/nix/store/{0:032d}-broken.drv' failed with exit code {status}"]
for line in lines:
    print(f"@{time.time():.6f} {line}" if stamp else line, flush=True)
    time.sleep(delay)
child.kill()
sys.exit(status)
