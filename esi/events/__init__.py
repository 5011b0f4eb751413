"""Events: something that happened in a system (an order changed in Creatio, a policy issued by the DMS), taken in
once and published as `<source>.event.<type>`, a copy for every subscriber.

    identity   an event's id from (source, type, record id, version); versions made comparable
    sink       `EventSink.emit`: validate, take once (the event log and the outbox, one transaction), publish
    ordering   a subscriber never ends with an older version of a record: a stale change is superseded
"""
