"""The error every ft_callbacks setting check raises (framework-free, so core code can use it too)."""

from __future__ import annotations


class ConfigurationError(ValueError):
    """A setting that cannot work; the message names the fix. Raised before training starts
    wherever the information exists by then."""
