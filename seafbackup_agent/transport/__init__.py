"""HTTP transport between the two agents: the primary's read-only API (server), the backup's object
source over it (client), the backup's notify endpoint, and the request signing both sides share."""
