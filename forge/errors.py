"""Errors a user sees. Each carries enough to find the problem: file, entry, field, line."""

from __future__ import annotations


class ForgeError(Exception):
    """Base for errors that the CLI prints as one clear line (no traceback)."""


class CatalogError(ForgeError):
    pass


class MixtureError(ForgeError):
    pass


class BuildError(ForgeError):
    pass


class TemplateError(ForgeError):
    pass


class QueryError(ForgeError):
    pass
