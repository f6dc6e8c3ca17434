"""The registry of classifier methods (supervised, fine-tuning, semi-supervised); ``fewlabels.semi``
imports every method so it registers."""

from __future__ import annotations

from fewlabels.registry import Registry

SEMI_METHODS: Registry[type] = Registry("classifier method")
