"""Market-data sources."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["quiet_library_warnings"]


@contextmanager
def quiet_library_warnings() -> Iterator[None]:
    """Silence the DeprecationWarnings schwab-py 1.5 triggers at import (websockets.legacy, Authlib httpx).

    Authlib installs an 'always' filter for its own warning when first imported, so it is imported
    before our 'ignore' filter goes in front of it.
    """
    with warnings.catch_warnings():
        import authlib.deprecate  # noqa: F401

        warnings.simplefilter("ignore", DeprecationWarning)
        yield
