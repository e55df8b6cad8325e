#!/usr/bin/python
"""Ansible module: what a MySQL/MariaDB server is and does, for the seafbackup roles (read-only)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: seafbackup_mysql_info
short_description: Read a database server's flavour, replication state and read_only, changing nothing
description:
  - The one way the seafbackup roles learn about a database server, so that each role can ask for itself
    instead of relying on facts another role set.
  - Returns the flavour table (every statement, status column and option that differs between MariaDB and MySQL,
    from C(module_utils/seafbackup_flavour.py)), the replication state in flavour-neutral keys, C(read_only) and,
    on MySQL, C(super_read_only).
  - Never changes anything, so it also runs in check mode; C(changed) is always false.
  - An unsupported server version is not a failure here; RV(flavour.supported) is false and RV(flavour.problem)
    says why.
version_added: "0.1.0"
author: seafbackup developers
extends_documentation_fragment:
  - seafbackup_login
options:
  login_user:
    description: Account to log in as (any account that may run C(SHOW SLAVE STATUS)/C(SHOW REPLICA STATUS)).
    type: str
    default: root
attributes:
  check_mode:
    support: full
    description: It only reads, in check mode as otherwise.
  diff_mode:
    support: none
requirements:
  - PyMySQL on the host
"""

EXAMPLES = r"""
- name: Read the backup's database server
  seafbackup_mysql_info:
    login_unix_socket: /run/mysqld/mysqld.sock
  register: server

- name: Stop replication the server's own way
  community.mysql.mysql_query:
    query: "{{ server.flavour.stop_replica }}"
  when: server.replica is not none
"""

RETURN = r"""
version:
  description: The server's C(VERSION()).
  returned: always
  type: str
  sample: 10.11.6-MariaDB-0+deb12u1
flavour:
  description:
    - The flavour table of C(module_utils/seafbackup_flavour.py) (C(name), C(label), C(show_replica_status),
      C(stop_replica), C(columns), ...) with C(supported) true; or C(supported) false and C(problem).
  returned: always
  type: dict
  sample: {"name": "mariadb", "label": "MariaDB 10.11.6", "supported": true, "stop_replica": "STOP SLAVE"}
server_id:
  description: C(@@server_id).
  returned: always
  type: int
log_bin:
  description: Whether the binary log is on.
  returned: always
  type: bool
read_only:
  description: C(@@GLOBAL.read_only).
  returned: always
  type: bool
super_read_only:
  description: C(@@GLOBAL.super_read_only).
  returned: on MySQL
  type: bool
replica:
  description:
    - The replication state in flavour-neutral keys (C(source_host), C(source_port), C(io_running),
      C(sql_running), C(running), C(seconds_behind), C(last_io_errno), C(last_io_error), C(last_sql_errno),
      C(last_sql_error), C(ignore_tables) as a sorted list, C(received_log_file)/C(received_log_pos),
      C(applied_log_file)/C(applied_log_pos), C(applied_all)); null when the server is not a replica.
  returned: always
  type: dict
  sample: {"source_host": "10.0.0.11", "source_port": 3306, "io_running": "Yes", "sql_running": "Yes",
           "running": true, "seconds_behind": 0, "applied_all": true, "ignore_tables": ["seafile_db.Repo"]}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.seafbackup_login import LOGIN_ARGUMENT_SPEC, MySQLError, connect, read_server


def main() -> None:
    module = AnsibleModule(argument_spec=dict(LOGIN_ARGUMENT_SPEC), supports_check_mode=True)
    conn = connect(module)
    try:
        with conn.cursor() as cur:
            info = read_server(cur)
    except MySQLError as exc:
        module.fail_json(msg=f"cannot read the server's state: {exc}")
    finally:
        conn.close()
    module.exit_json(changed=False, **info)


if __name__ == "__main__":
    main()
