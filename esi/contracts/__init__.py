"""The bus's contract as documents: JSON Schema of every payload and of the envelope (`esi.contracts.schemas`), the
AsyncAPI 3.0 document of the bus (`esi.contracts.asyncapi`), and the check that keeps a committed snapshot
compatible (`esi.contracts.compat`).

`esi contracts export DIR` writes them, `esi contracts check DIR` guards them, the API serves `GET /asyncapi.json`.
"""
