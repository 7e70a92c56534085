"""opctl's defaults that its quick path needs too (standard library only)."""

from __future__ import annotations

# How long a method call may go unanswered. Every op-dbusd method answers at
# once or returns a job (whose end is waited for by signals, not by this), so
# a minute of silence means a daemon or bus that stopped answering.
CALL_TIMEOUT = 60.0
CALL_TIMEOUT_ENV = "OPDBUS_CALL_TIMEOUT"
