from __future__ import annotations

import pytest
from dbus_fast import Variant
from pydantic import BaseModel, ConfigDict, Field

from opdbus.bus.codec import decode_options, plain
from opdbus.errors import InvalidArgs
from opdbus.models.container import ContainerSpec, StopOptions
from opdbus.models.network import Addressing, BridgeSpec, PortSpec
from opdbus.models.validation import ValidateOptions
from opdbus.models.vm import ShutdownOptions


class Sample(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    count: int = Field(1, ge=1, le=10)
    names: list[str] = []
    ratio: float = 0.5
    label: str | None = None


def test_decodes_good_options() -> None:
    opts = decode_options(ValidateOptions, {"quick": Variant("b", True)}, "Validate")
    assert opts.quick is True and opts.fix is False
    sample = decode_options(
        Sample,
        {
            "count": Variant("u", 3),
            "names": Variant("as", ["a"]),
            "ratio": Variant("i", 1),
            "label": Variant("s", "x"),
        },
        "Sample",
    )
    assert sample == Sample(count=3, names=["a"], ratio=1.0, label="x")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"quick": Variant("s", "yes")},
            "option 'quick' of Validate must be a boolean (b), not D-Bus type 's'",
        ),
        ({"quick": Variant("i", 1)}, "must be a boolean"),
        (
            {"bogus": Variant("b", True)},
            "unknown option 'bogus' for Validate; valid options: fix, quick",
        ),
    ],
)
def test_rejects_bad_options_with_a_clear_message(
    options: dict[str, Variant], message: str
) -> None:
    with pytest.raises(InvalidArgs, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode_options(ValidateOptions, options, "Validate")


def test_value_range_errors_name_the_option() -> None:
    with pytest.raises(
        InvalidArgs, match="option 'count' of Sample: Input should be less than or equal to 10"
    ):
        decode_options(Sample, {"count": Variant("u", 11)}, "Sample")
    with pytest.raises(InvalidArgs, match="must be a list of strings"):
        decode_options(Sample, {"names": Variant("ai", [1])}, "Sample")


def test_plain_unwraps_nested_variants() -> None:
    value = {"a": Variant("a{sv}", {"b": Variant("i", 1)}), "c": [Variant("s", "d")], "e": b"\x01"}
    assert plain(value) == {"a": {"b": 1}, "c": ["d"], "e": "01"}


@pytest.mark.parametrize(
    ("model", "options", "message"),
    [
        # Optional, constrained and list options were let through to pydantic,
        # which coerced them ("5" -> 5.0, True -> 1.0, "1" -> 1).
        (ShutdownOptions, {"timeout": Variant("s", "5")}, "'timeout' .* a number \\(d\\)"),
        (StopOptions, {"timeout": Variant("b", True)}, "'timeout' .* a number \\(d\\)"),
        (ContainerSpec, {"id": Variant("s", "1")}, "'id' .* an integer \\(u\\)"),
        (ContainerSpec, {"ipv4": Variant("s", "10.0.0.2/24")}, "'ipv4' .* a list of strings"),
        (Addressing, {"mtu": Variant("s", "1400")}, "'mtu' .* an integer \\(u\\)"),
        (PortSpec, {"name": Variant("s", "p"), "trunks": Variant("as", ["10"])}, "'trunks'"),
        (BridgeSpec, {"name": Variant("s", "b"), "ports": Variant("as", ["p"])}, "'ports'"),
    ],
)
def test_every_option_has_its_d_bus_type_enforced(
    model: type[BaseModel], options: dict[str, Variant], message: str
) -> None:
    with pytest.raises(InvalidArgs, match=message):
        decode_options(model, options, "X")


def test_the_right_types_still_pass() -> None:
    assert decode_options(ShutdownOptions, {"timeout": Variant("u", 5)}, "X").timeout == 5.0
    assert decode_options(ContainerSpec, {"id": Variant("u", 101)}, "X", name="c").id == 101
    assert decode_options(Addressing, {"mtu": Variant("q", 1400)}, "X").mtu == 1400
