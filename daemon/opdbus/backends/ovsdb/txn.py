"""One OVSDB transaction being built in the IDL thread: what the commands see of OVSDB."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import ovs.db.idl

from opdbus.errors import BackendFailed


class Txn:
    """One OVSDB transaction being built in the IDL thread (commands use only this)."""

    def __init__(self, idl: ovs.db.idl.Idl, names: dict[str, dict[str, UUID]]) -> None:
        self._idl = idl
        self._names = names
        self._txn = ovs.db.idl.Transaction(idl)
        self.changed = False
        self.bump = False
        # What this transaction made or removed, so that later commands in the
        # same transaction see it (ApplyBridges adds a bridge, then its ports).
        self._inserted: dict[tuple[str, str], Any] = {}
        self._deleted: set[UUID] = set()
        # Interfaces made or removed: ovs-vswitchd's work (and wait) grows with them.
        self.interfaces_touched = 0

    @property
    def root(self) -> Any:
        rows = self._idl.tables["Open_vSwitch"].rows
        if not rows:
            raise BackendFailed("the Open_vSwitch table is empty: run `ovs-vsctl --no-wait init`")
        return next(iter(rows.values()))

    def find(self, table: str, name: str) -> Any | None:
        new = self._inserted.get((table, name))
        if new is not None:
            return new
        uuid = self._names[table].get(name)
        if uuid is None or uuid in self._deleted:
            return None
        return self._idl.tables[table].rows.get(uuid)

    def insert(self, table: str, **columns: Any) -> Any:
        row = self._txn.insert(self._idl.tables[table])
        for column, value in columns.items():
            setattr(row, column, value)
        if "name" in columns:
            self._inserted[(table, columns["name"])] = row
        if table == "Interface":
            self.interfaces_touched += 1
        self.changed = True
        return row

    def set(self, row: Any, **columns: Any) -> None:
        for column, value in columns.items():
            setattr(row, column, value)
        self.changed = True

    def add_ref(self, row: Any, column: str, target: Any) -> None:
        row.addvalue(column, target.uuid)  # a "mutate insert": O(1), not a rewrite of the set
        self.changed = True

    def remove_ref(self, row: Any, column: str, target: Any) -> None:
        row.delvalue(column, target.uuid)
        self.changed = True

    def delete(self, row: Any) -> None:
        if row._table.name == "Interface":
            self.interfaces_touched += 1
        self._deleted.add(row.uuid)
        for key, new in list(self._inserted.items()):
            if new is row:
                del self._inserted[key]
        row.delete()
        self.changed = True

    @property
    def raw(self) -> Any:
        return self._txn

    def status(self) -> str:
        return str(self._txn.commit())  # once sent, commit() only reports how it went

    def commit(self) -> tuple[str, int | None]:
        """Send it (no wait): (status, next_cfg once it succeeded and vswitchd must apply it)."""
        if not self.changed:
            self._txn.abort()
            return ovs.db.idl.Transaction.UNCHANGED, None
        if self.bump:
            self.root.increment("next_cfg")
        status = self._txn.commit()
        if status == ovs.db.idl.Transaction.INCOMPLETE:
            return status, None
        return self.finish()

    def finish(self) -> tuple[str, int | None]:
        """How a sent transaction ended, as commit() says it."""
        status = self._txn.commit()
        if status == ovs.db.idl.Transaction.SUCCESS:
            return status, self._txn.get_increment_new_value() if self.bump else None
        if status in (ovs.db.idl.Transaction.UNCHANGED, ovs.db.idl.Transaction.TRY_AGAIN):
            return status, None
        raise BackendFailed(f"OVSDB refused the transaction ({status}): {self._txn.get_error()}")

    def abort(self) -> None:
        self._txn.abort()
