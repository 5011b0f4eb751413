"""esi under chaos: a workload of every flow, a nemesis injecting every fault class from a seed, and a checker of
every effect (docs/reliability.md).

    workload.py  the flows (one small class each) and 1C's behaviour: repeats, changed bodies, waits, polls
    nemesis.py   the fault classes and the seeded schedule
    checker.py   what must hold after the run drained; the table per fault class and the JSON report
    infra.py     the run's own RabbitMQ node(s), PostgreSQL server and TCP proxies (never the shared servers)
    run.py       `python -m chaos.run` (`make chaos`): all of the above, torn down afterwards

Like `bench/`, it drives esi only through its public harness (`esi.testing`) and HTTP: esi runs in subprocesses.
"""
