"""Database connections of the agents (seafile/db.py)."""

import ssl

from seafbackup_agent.config import load_seafile_conf
from seafbackup_agent.seafile.db import connect


def test_connections_share_one_tls_context_and_still_work(lab):
    """Without TLS options PyMySQL tries TLS when the server offers it, unverified, and built a new context for
    every connection, loading the system's CA store each time (0.1-0.3 s of CPU: a backup agent whose heartbeat
    reader reconnected each second spent a fifth of its time there). One context serves them all, as it was."""
    settings = load_seafile_conf(lab.primary.seafile_conf_dir).database
    first, second = connect(settings), connect(settings)
    try:
        assert first.ctx is second.ctx
        assert first.ctx.verify_mode == ssl.CERT_NONE and not first.ctx.check_hostname
        for conn in (first, second):
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                assert cur.fetchone() == (1,)
    finally:
        first.close()
        second.close()
