"""Providers: one per kind of resource the desired state describes (net, lxc, vms)."""
