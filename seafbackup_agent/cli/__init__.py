"""seaf-backup-cmd."""
