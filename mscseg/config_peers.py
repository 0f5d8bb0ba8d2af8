"""The peers' config sections (``instance.peers.<name>``): each is the peer's own settings class
(``peers.peer_module(name).SETTINGS``: its fields, defaults and checks) plus ``enabled``, made once per peer
(a stand-in with ``enabled`` alone when ``peers/<name>.py`` is not in this installation); ``PeersConfig``
holds one per peer. Also which peers a section enables and whether one starts from random weights.
``mscseg.config`` re-exports every name here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import peers
from data.settings import Problem, setting

if TYPE_CHECKING:
    from .config import Problems

PEER_NAMES = peers.PEER_NAMES
PEER_ENABLED_HELP = "train this peer on the instance split and add its rows to every instance table, test and figure"


class _PeerModuleMissing:
    """Stands in for a peer's settings class when ``peers/<name>.py`` is not in this installation: only ``enabled``."""

    missing_module = True

    def problems(self) -> list[Problem]:
        return []


_PEER_SECTIONS: dict[tuple[str, type], type] = {}


def peer_settings_class(name: str) -> type:
    """The peer's settings dataclass (``peers.peer_module(name).SETTINGS``); a stand-in without fields when its
    module is not in this installation (the peer's step then marks it absent)."""
    try:
        return peers.peer_module(name).SETTINGS
    except ModuleNotFoundError as error:
        if error.name != f"peers.{name}":
            raise
        return dataclass(type(f"{name.capitalize()}Missing", (_PeerModuleMissing,), {"__module__": __name__}))


def peer_section(name: str) -> type:
    """The config section ``instance.peers.<name>``: the peer's settings dataclass (its fields, defaults and
    ``problems()``, declared once in ``peers/<name>.py``) plus ``enabled``."""
    base = peer_settings_class(name)
    key = (name, base)
    if key not in _PEER_SECTIONS:
        params = getattr(base, "__dataclass_params__", None)

        def check(self, where: str, problems: "Problems") -> None:
            problems.add(where, base.problems(self))

        _PEER_SECTIONS[key] = dataclasses.make_dataclass(
            f"{name.capitalize()}PeerConfig",
            [("enabled", bool, setting(False, PEER_ENABLED_HELP, stamped_at_default=False))],
            bases=(base,), namespace={"check": check, "__module__": __name__,
                                      "__doc__": f"instance.peers.{name}: the peer's settings ({base.__name__}) and enabled."},
            frozen=bool(params and params.frozen))
    return _PEER_SECTIONS[key]


def _peer_field(name: str) -> Any:
    return field(default_factory=lambda: peer_section(name)(), metadata={"peer": name})


@dataclass
class PeersConfig:
    """The tools a lab would pick instead (``peers``): one section per peer, off unless ``enabled``.

    Each section is the peer's own settings class (``peers.<name>.SETTINGS``): its fields, defaults
    and checks; bad values are refused here, before any step runs.
    """

    cellpose: Any = _peer_field("cellpose")
    stardist: Any = _peer_field("stardist")

    def check(self, where: str, problems: Problems) -> None:
        for name in PEER_NAMES:
            getattr(self, name).check(f"{where}.{name}", problems)


def enabled_peers(instance: Any) -> list[str]:
    """The peers enabled in an instance section (or a step's view of it that declares ``instance.peers.<name>.enabled``)."""
    return [name for name in PEER_NAMES if getattr(instance.peers, name).enabled]


def random_start(section: Any) -> bool:
    """True when a peer section starts from random weights (``weights`` none, or no such field)."""
    weights = getattr(section, "weights", None)
    return weights is None or str(weights).strip().lower() in ("none", "null", "")
