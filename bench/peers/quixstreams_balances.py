"""weir-bench's peer: the minimal projection (a running balance and transaction count per
account, one state read and one state write per event) in quixstreams, a Python stream processor,
reading the topic weir reads in the same run.

Usage: python quixstreams_balances.py BROKERS TOPIC GROUP EVENTS STATE_DIR
Prints one JSON line: events processed and the seconds from the first event to the last, so the
consumer-group join is not counted (as it is not for weir).
"""

import json
import sys
import time

from quixstreams import Application


def main() -> None:
    brokers, topic, group, events, state_dir = sys.argv[1:6]
    events = int(events)
    seen = {"count": 0, "first": None, "last": None}
    app = Application(
        broker_address=brokers,
        consumer_group=group,
        auto_offset_reset="earliest",
        state_dir=state_dir,
        consumer_extra_config={"session.timeout.ms": 6000},
        loglevel="WARNING",
    )

    def update(value: dict, state) -> dict:
        now = time.perf_counter()
        if seen["first"] is None:
            seen["first"] = now
        balance = state.get("balance", 0.0) + float(value["amount"])
        transactions = state.get("transactions", 0) + 1
        state.set("balance", balance)
        state.set("transactions", transactions)
        seen["count"] += 1
        if seen["count"] == events:
            seen["last"] = now
            app.stop()
        return {"balance": balance, "transactions": transactions}

    stream = app.dataframe(app.topic(topic, value_deserializer="json", key_deserializer="str"))
    stream.apply(update, stateful=True)
    app.run()
    if seen["last"] is None:
        sys.exit(f"quixstreams stopped after {seen['count']} of {events} events")
    print(json.dumps({"events": seen["count"], "seconds": seen["last"] - seen["first"]}))


if __name__ == "__main__":
    main()
