"""systemd units op-dbus keeps watch over: what the bus shows of each (org.opdbus.Unit1).

Only units a state document names are watched (systemd has hundreds); their
fields are systemd's own words, so ``systemctl`` and op-dbus never disagree.
"""

from __future__ import annotations

from pydantic import ConfigDict

from opdbus.models.base import Model

# UnitFileState values that mean "started at boot" / "masked" (systemd's own set).
ENABLED_STATES = frozenset({"enabled", "enabled-runtime", "linked", "linked-runtime", "alias"})
MASKED_STATES = frozenset({"masked", "masked-runtime"})
# ActiveState values counted as "active" in a document (on the way up, or up).
ACTIVE_STATES = frozenset({"active", "activating", "reloading"})


class UnitInfo(Model):
    model_config = ConfigDict(frozen=True)

    name: str
    description: str = ""
    load_state: str = ""  # loaded, not-found, masked, bad-setting, error
    active_state: str = ""  # active, inactive, failed, activating, deactivating, reloading
    sub_state: str = ""  # running, dead, exited, ...
    file_state: str = ""  # UnitFileState: enabled, disabled, static, masked, ... ("": no file)

    @property
    def found(self) -> bool:
        return self.load_state != "not-found" or self.file_state != ""

    @property
    def enabled(self) -> bool | None:
        """On at boot; None for units that cannot be enabled or disabled (static, generated)."""
        if self.file_state in ENABLED_STATES:
            return True
        if self.file_state in ("disabled",) or self.file_state in MASKED_STATES:
            return False
        return None

    @property
    def masked(self) -> bool:
        return self.file_state in MASKED_STATES or self.load_state == "masked"

    @property
    def active(self) -> bool:
        return self.active_state in ACTIVE_STATES
