"""A node's Kamailio htables in memory, for unit tests only (the real ones are declared by
kamailio.cfg.j2 from omnicc.sip_security.htable_definitions).

Modelled as Kamailio keeps them: one store shared by every worker of a node; a table's
``autoexpire`` applies to the items it creates, and with ``updateexpire=0`` an update does
not push an item's expiry back; ``sht_setxs`` gives an item an expiry of its own;
``sht_inc`` of a missing item creates it (initval + 1) only in a table with an
``initval``, and otherwise fails as Kamailio's does (KEMI returns -255, its "no value");
``sht_inc`` of an item whose expiry has passed but which htable's timer has not purged
yet restarts it at initval + 1 and leaves its expiry in the past, as Kamailio 5.6 does
(``purge`` is the timer).
Time is a clock the test controls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

KEMI_NO_VALUE = -255  # what a KEMI function returning int gives when it has nothing


def _options(definition: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in definition.split(";") if part)


class FakeHtables:
    def __init__(self, definitions: dict[str, str], clock: Callable[[], float]) -> None:
        self._autoexpire = {name: int(_options(d).get("autoexpire", "0"))
                            for name, d in definitions.items()}
        self._update_expire = {name: _options(d).get("updateexpire", "1") != "0"
                               for name, d in definitions.items()}
        self._initval = {name: int(_options(d)["initval"])
                         for name, d in definitions.items() if "initval" in _options(d)}
        self._clock = clock
        self._items: dict[tuple[str, str], tuple[Any, float | None]] = {}

    def _table(self, table: str) -> None:
        if table not in self._autoexpire:
            # Kamailio: "htable not found" is an error, never a new table.
            raise KeyError(f"no htable {table!r} is declared")

    def _live(self, table: str, key: str) -> tuple[Any, float | None] | None:
        self._table(table)
        item = self._items.get((table, key))
        if item is None:
            return None
        if item[1] is not None and self._clock() >= item[1]:
            return None  # expired: invisible, but kept until purge()
        return item

    def _expiry(self, table: str) -> float | None:
        seconds = self._autoexpire[table]
        return self._clock() + seconds if seconds else None

    # The NodeTables protocol (omnicc.sip_security) ------------------------------------
    def get(self, table: str, key: str) -> Any:
        item = self._live(table, key)
        return None if item is None else item[0]

    def set_expiring(self, table: str, key: str, value: str, seconds: int) -> None:
        self._table(table)
        self._items[(table, key)] = (value, self._clock() + seconds)

    def increment(self, table: str, key: str) -> int:
        self._table(table)
        stale = self._items.get((table, key))
        if stale is not None and stale[1] is not None and self._clock() >= stale[1]:
            value = self._initval.get(table, 0) + 1
            self._items[(table, key)] = (value, stale[1])  # restarted, still expired
            return value
        item = self._live(table, key)
        if item is None:
            if table not in self._initval:
                return KEMI_NO_VALUE
            value = self._initval[table] + 1
            self._items[(table, key)] = (value, self._expiry(table))
            return value
        value, expires_at = item
        if self._update_expire[table]:
            expires_at = self._expiry(table)
        self._items[(table, key)] = (value + 1, expires_at)
        return value + 1

    def set_expiry(self, table: str, key: str, seconds: int) -> None:
        self._table(table)
        item = self._items.get((table, key))
        if item is not None:
            self._items[(table, key)] = (item[0], self._clock() + seconds)

    def purge(self) -> None:
        """htable's timer: expired items go."""
        now = self._clock()
        self._items = {k: v for k, v in self._items.items() if v[1] is None or now < v[1]}

    def remove(self, table: str, key: str) -> None:
        self._table(table)
        self._items.pop((table, key), None)

    # Test helpers ---------------------------------------------------------------------
    def keys(self, table: str) -> list[str]:
        return sorted(key for (name, key) in list(self._items) if name == table
                      and self._live(table, key) is not None)
