"""`--conf-dir` and `--data-dir`, defaulting as Seafile's own scripts find them (seafbackup_agent.config)."""

from __future__ import annotations

import argparse
from pathlib import Path

from seafbackup_agent.config import CONF_DIR_VARIABLE, DATA_DIR_VARIABLE, default_conf_dir, default_data_dir


def add_conf_dir(parser: argparse.ArgumentParser, what: str = "Seafile's conf directory (holds seafile.conf)") -> None:
    parser.add_argument("--conf-dir", type=Path, default=default_conf_dir(),
                        help=f"{what}; default ${CONF_DIR_VARIABLE}, else /opt/seafile/conf (now: %(default)s)")


def add_data_dir(parser: argparse.ArgumentParser, what: str = "Seafile's seafile-data directory") -> None:
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help=f"{what}; default ${DATA_DIR_VARIABLE}, else /opt/seafile/seafile-data "
                             "(now: %(default)s)")
