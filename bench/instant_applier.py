"""A stand-in for ovs-vswitchd that applies nothing and acknowledges at once.

ovs-vswitchd reports a change applied by setting Open_vSwitch.cur_cfg to
the next_cfg the writer bumped. Doing only that, and no datapath work, lets
a benchmark measure op-dbusd's own cost as a bridge grows -- separately from
ovs-vswitchd's, which grows with every port it manages. Never used by tests:
they run the real ovs-vswitchd.
"""

from __future__ import annotations

import signal
import sys

import ovs.db.idl
import ovs.poller


def main(remote: str, schema: str) -> None:
    helper = ovs.db.idl.SchemaHelper(location=schema)
    helper.register_columns("Open_vSwitch", ["next_cfg", "cur_cfg"])
    idl = ovs.db.idl.Idl(remote, helper)
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    while not stop:
        idl.run()
        for row in list(idl.tables["Open_vSwitch"].rows.values()):
            if row.cur_cfg != row.next_cfg:
                txn = ovs.db.idl.Transaction(idl)
                row.cur_cfg = row.next_cfg
                txn.commit_block()
        poller = ovs.poller.Poller()
        idl.wait(poller)
        poller.timer_wait(200)
        poller.block()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
