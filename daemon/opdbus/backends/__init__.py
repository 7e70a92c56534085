"""The blocking or external worlds, typed and wrapped (libvirt, OVSDB, LXC, hosts...)."""
