"""Pydantic models of the API's data: what crosses the bus, the disk or a client.

Clients import these (they are part of the public contract); services take and
return them; the bus layer converts them to and from D-Bus values.
"""
