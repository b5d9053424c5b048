"""The app's processes under supervisord: restart onto the new release, verify, switch back."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .report import Skip

if TYPE_CHECKING:
    from .deploy import Deploy


def restart(d: Deploy) -> str:
    return Skip("no Procfile processes")


def restart_previous(d: Deploy) -> None:
    return None


def verify(d: Deploy) -> str:
    return Skip("no processes to check")
