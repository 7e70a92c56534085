"""The base of every op-dbus model: validated like any pydantic model, built when first used.

``defer_build``: pydantic builds a model's validator when the model is first
used rather than when its module is imported. `opctl vm list` then builds
VmInfo and nothing of the VM profile's dozens of models, and the daemon
does not build models of the kinds its mode never serves (measured: a
third of the import of opdbus.models.vm).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    model_config = ConfigDict(defer_build=True)
