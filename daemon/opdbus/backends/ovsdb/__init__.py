"""Open vSwitch through OVSDB: one IDL thread (idl), frozen rows (rows), the
loop-side cache and transactions (client), and the writes op-dbus makes (commands)."""
