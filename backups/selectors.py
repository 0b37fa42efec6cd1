"""Reads of the backup catalogue."""

from __future__ import annotations

from django.db.models import QuerySet

from backups.models import Backup, BackupStatus


def backup_list() -> QuerySet[Backup]:
    return Backup.objects.order_by("-started_at", "-id")


def backup_newest_verified() -> Backup | None:
    return backup_list().filter(status=BackupStatus.VERIFIED).first()


def backup_newest() -> Backup | None:
    """The newest backup that has files on disk, whatever its status."""
    return backup_list().exclude(path="").first()
