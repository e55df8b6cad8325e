"""The database login options every seafbackup module that reads MySQL/MariaDB takes (module_utils/seafbackup_login)."""


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  login_unix_socket:
    description: Unix socket of the database server. When it does not exist the module fails naming the path.
    type: path
  login_host:
    description: Host of the database server when no socket is given.
    type: str
    default: localhost
  login_port:
    description: Port of the database server when no socket is given.
    type: int
    default: 3306
  login_user:
    description: Account to log in as.
    type: str
    default: root
  login_password:
    description: Password of O(login_user); empty for unix-socket authentication.
    type: str
"""
