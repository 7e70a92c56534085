"""LXC containers through the lxc-* tools (see tools.py for why not liblxc)."""
