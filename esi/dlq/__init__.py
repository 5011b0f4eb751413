"""Operations on dead letters at scale, over the bus and the store together: the index's sweep (`sweep`), replay
and purge jobs run in the API service (`jobs`), edits (`edit`) and JSON Lines export and import (`transfer`).

The bus knows no store and the store no bus; this package is where the two meet for the operator's work on dead
letters (the API, the console and the CLI call it).
"""
