"""The lookup every name registry of export/ shares (backbones, torchvision families, export artefacts).

Each registry is a plain ``dict`` of name -> entry owned by its module (tests swap it for a copy); this module
says once how a name is looked up (an unknown one names the known ones, in one line) and how an entry's split
points are computed once without touching the caller's random stream.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Tuple, Type, TypeVar

import torch

E = TypeVar("E")


def known(table: Mapping[str, object]) -> list[str]:
    """Registered names, sorted."""
    return sorted(table)


def lookup(table: Mapping[str, E], name: str, what: str, error: Type[Exception] = ValueError) -> E:
    """``table[name]``, or ``error("unknown <what> 'name'; known: a, b")``."""
    if name not in table:
        raise error(f"unknown {what} {name!r}; known: {', '.join(known(table))}")
    return table[name]


def cached_points(cache: list, compute: Callable[[], Iterable[str]]) -> Tuple[str, ...]:
    """``compute()`` once into ``cache`` (an entry's own list), under ``fork_rng``: building a model to read its
    split points must not move the caller's random stream."""
    if not cache:
        with torch.random.fork_rng(devices=[]):
            cache.extend(compute())
    return tuple(cache)
