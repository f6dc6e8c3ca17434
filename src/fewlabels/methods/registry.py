"""The registry of methods; ``fewlabels.methods`` imports every method so it registers."""

from __future__ import annotations

from fewlabels.registry import Registry

METHODS: Registry[type] = Registry("method")
