"""Names from user text: slugs for campaigns, datasets and object keys (shared by ingest, render, DAGs)."""

from __future__ import annotations

import re
import unicodedata

_SLUG_BAD = re.compile(r"[^A-Za-z0-9._-]+")


def slugify(text: str, max_len: int = 80) -> str:
    """A safe object-key part: ASCII letters, digits, '.', '_' and '-' only."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = _SLUG_BAD.sub("-", ascii_text).strip(".-_")
    slug = re.sub(r"-{2,}", "-", slug)
    return slug[:max_len].strip(".-_")
