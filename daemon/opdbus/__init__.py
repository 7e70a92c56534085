"""op-dbus: one asyncio daemon that owns a hypervisor host and publishes it on D-Bus."""
