"""seafbackup: a real-time backup server for Seafile."""

__version__ = "0.1.0"
