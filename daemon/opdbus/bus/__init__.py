"""D-Bus adapters: decode, check the caller, call a service, encode. Nothing else.

This is the only package that imports dbus_fast.
"""
