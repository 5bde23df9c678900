"""``suggestion``: the "did you mean" hint every configuration error uses."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def suggestion(word: str, options: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest option, or ``""``."""
    options = list(options)
    lowered = {o.lower(): o for o in options}
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if not close and word.lower() in lowered:  # differs only in case
        close = [lowered[word.lower()]]
    if not close and len(word) >= 3:  # an abbreviation: "slope" for "slope_mm_per_unit"
        close = sorted((o for o in options if o.lower().startswith(word.lower())), key=len)[:1]
    return f" (did you mean {close[0]!r}?)" if close else ""
