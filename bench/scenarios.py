"""The named scenarios as the benchmark uses them: the registry of :mod:`lightcl.data.scenarios` (which
``lightcl learn`` reads without importing the benchmark), each entry checked against the zoo of the export
layer: its ``arch`` must be a registered backbone, and ``split`` (None = that backbone's default) a valid
split point, resolved here."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from lightcl.data import scenarios as _data
from lightcl.engine.errors import InputError


@dataclass(frozen=True)
class Scenario(_data.Scenario):
    """A :class:`lightcl.data.scenarios.Scenario` whose arch and split are checked (split resolved)."""

    def __post_init__(self) -> None:
        from lightcl.export.zoo import backbone_entry

        try:
            entry = backbone_entry(self.arch)
        except ValueError as e:
            raise InputError(f"scenario {self.name!r}: {e}") from None
        if self.split is None:
            object.__setattr__(self, "split", entry.split)
        elif self.split not in entry.split_points:
            raise InputError(f"scenario {self.name!r}: unknown split point {self.split!r} for {self.arch}; "
                             f"valid: {', '.join(entry.split_points)}")


SCENARIOS: dict[str, Scenario] = {name: Scenario(**asdict(s)) for name, s in _data.SCENARIOS.items()}


def get_scenario(name: str, **overrides) -> Scenario:
    """The named scenario with ``overrides`` (None values ignored); ``arch`` alone also resets the split to
    that backbone's default."""
    overrides = _data.check_overrides(name, overrides)
    s = SCENARIOS[name]
    return replace(s, **overrides) if overrides else s
