"""Personal data masked for a reader who may not see it: `esi.security.masking`, which the audit of a dead letter's
edit uses too (the API and the CLI write it, and know no console)."""

from __future__ import annotations

from esi.security.masking import PERSONAL_FIELDS, mask, mask_text

__all__ = ["PERSONAL_FIELDS", "mask", "mask_text"]
