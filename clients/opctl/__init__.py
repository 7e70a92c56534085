"""Thin clients of op-dbusd: the async client library and the opctl command line."""
