"""Free text callers give (descriptions, results): bounded, and safe in XML and logs.

XML 1.0 cannot carry most C0 control characters: a description with \\x01
would make libvirt's domain XML (and even a read-only CheckVMProfile answer)
invalid. They are refused where the text comes in, with the field named.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

# Tab, newline and carriage return are text; the rest of C0, and the two
# non-characters XML forbids, are not.
_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def check_text(text: str) -> str:
    found = _FORBIDDEN.search(text)
    if found is not None:
        raise ValueError(
            f"contains the control character U+{ord(found.group()):04X} at position "
            f"{found.start()}; only printable text, tabs and newlines are allowed"
        )
    return text


Description = Annotated[str, Field(max_length=1024), AfterValidator(check_text)]
