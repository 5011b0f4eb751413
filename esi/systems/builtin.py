"""The systems esi ships with. Adding one is a package `esi/systems/<code>/` declaring `SYSTEM`, and a line here
(or, outside esi, `ESI_SYSTEMS=module:attribute`: see README "Adding a system")."""

from __future__ import annotations

from esi.systems.crm import SYSTEM as CRM
from esi.systems.dms import SYSTEM as DMS
from esi.systems.onec import SYSTEM as ONEC

BUILT_IN = (ONEC, DMS, CRM)
