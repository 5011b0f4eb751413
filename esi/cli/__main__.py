"""`python -m esi.cli ...`, the same as `esi ...`."""

from esi.cli import main

main()
