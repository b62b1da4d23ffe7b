"""The protocols the appliance knows: the built-ins, then installed plugins.

A plugin is a Python distribution that declares an entry point in the group
``microseg.protocols``; the entry point names a ``ProtocolPlugin`` object (or
a function returning one). Built-in protocols are plugins too, declared here
rather than through packaging so they load without an installed copy.

Order matters: ``detect`` breaks confidence ties by it and the kernel tries
signature shapes in it, so the built-ins come first (in a fixed order), then
plugins sorted by name.
"""
from __future__ import annotations

import importlib
from functools import lru_cache
from importlib.metadata import entry_points

from .api import Direction, PluginError, ProtocolPlugin

ENTRY_POINT_GROUP = "microseg.protocols"
BUILTIN_MODULES = ("protocols.http", "protocols.tls", "protocols.dns", "protocols.ssh",
                   "protocols.mysql", "protocols.redis", "protocols.http2",
                   "protocols.quic", "protocols.smtp",
                   "protocols.postgresql", "protocols.kafka", "protocols.mongodb",
                   "protocols.mqtt")


def builtin_plugins() -> list[ProtocolPlugin]:
    out = []
    for mod in BUILTIN_MODULES:
        plugin = importlib.import_module(mod).PLUGIN
        plugin.check()
        out.append(plugin)
    return out


def installed_plugins() -> list[ProtocolPlugin]:
    """Plugins declared by installed distributions, sorted by name."""
    out = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        where = f"plugin entry point {ep.name!r} ({ep.value})"
        try:
            obj = ep.load()
        except Exception as e:   # a broken third-party package: name it, do not crash
            raise PluginError(f"{where}: cannot load: {type(e).__name__}: {e}") from None
        plugin = obj() if callable(obj) and not isinstance(obj, ProtocolPlugin) else obj
        if not isinstance(plugin, ProtocolPlugin):
            raise PluginError(f"{where}: is a {type(plugin).__name__}, not a ProtocolPlugin")
        try:
            plugin.check()
        except PluginError as e:
            raise PluginError(f"{where}: {e}") from None
        out.append(plugin)
    return out


def all_plugins(extra: tuple[ProtocolPlugin, ...] = ()) -> list[ProtocolPlugin]:
    """Built-ins, installed plugins, then ``extra``; a name used twice is an error."""
    plugins = [*builtin_plugins(), *installed_plugins(), *extra]
    seen: dict[str, ProtocolPlugin] = {}
    for p in plugins:
        if p.name in seen:
            raise PluginError(f"protocol name {p.name!r} is declared twice")
        seen[p.name] = p
    return plugins


@lru_cache(maxsize=1)
def default_plugins() -> tuple[ProtocolPlugin, ...]:
    return tuple(all_plugins())


def by_name(plugins=None) -> dict[str, ProtocolPlugin]:
    return {p.name: p for p in (plugins if plugins is not None else default_plugins())}


def detect(data: bytes, direction: Direction, transport: str = "tcp",
           plugins=None) -> tuple[str | None, float]:
    """(name, confidence) of the protocol whose probe rates ``data`` highest;
    (None, 0.0) when none claims it. Ties go to the earlier plugin."""
    best, conf = None, 0.0
    for p in plugins if plugins is not None else default_plugins():
        if transport not in p.transports:
            continue
        try:
            c = float(p.probe(data, direction))
        except Exception:   # a probe must not take detection down; it just does not match
            c = 0.0
        if c > conf:
            best, conf = p.name, c
    return best, conf
