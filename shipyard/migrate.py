"""Database migrations: detected, listed, applied once under the deploy lock."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .report import Skip

if TYPE_CHECKING:
    from .deploy import Deploy


def apply(d: Deploy) -> str:
    return Skip("no migrations configured")
