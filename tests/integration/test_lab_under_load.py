"""The lab comes up on a machine busy with other work, and says why when it does not (issue 16)."""

import shutil

import pytest

from seafbackup_lab.lab import Lab
from seafbackup_lab.mariadb import LabError
from seafbackup_lab.stress import busy_disk, start_labs_at_once
from tests.helpers import LOAD_ADDRESSES, TEST_TMP, make_lab_dir, root_sql


def test_a_server_starting_leaves_the_temporary_tables_of_other_servers_alone(lab):
    # mariadb-install-db works with temporary tables; another server starting used to delete their files
    # ("Could not remove temporary table") and the install failed.
    conn = lab.primary.mariadb.root_connection("seafile_db")
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TEMPORARY TABLE scratch (a INT) ENGINE=Aria")
            cur.execute("INSERT INTO scratch VALUES (1)")
            lab.backup.mariadb.stop()
            lab.backup.mariadb.start()
            cur.execute("ALTER TABLE scratch ADD COLUMN b INT")
            cur.execute("SELECT * FROM scratch")
            assert cur.fetchall() == ((1, None),)
    finally:
        conn.close()


def test_labs_started_at_once_beside_a_busy_disk_all_come_up():
    labs = [Lab(make_lab_dir("seafbackup-test-load-"), addresses) for addresses in LOAD_ADDRESSES]
    try:
        with busy_disk(TEST_TMP):
            results = start_labs_at_once(labs)
        reasons = [result.error for result in results if result.error]
        assert not reasons, "\n\n".join(reasons)
        for lab in labs:
            for host in lab.hosts.values():
                assert root_sql(host, "SELECT @@bind_address, COUNT(*) FROM information_schema.schemata "
                                      "WHERE schema_name IN ('ccnet_db', 'seafile_db', 'seahub_db')") \
                    == ((host.address, 3),)
    finally:
        for lab in labs:
            lab.down()
            shutil.rmtree(lab.dir, ignore_errors=True)


def test_a_server_that_cannot_start_says_why_with_its_command_and_error_log(lab, fresh_lab):
    taken = Lab(fresh_lab.dir, {"primary": lab.primary.address, "backup": lab.backup.address})
    with pytest.raises(LabError) as failure:
        taken.up()
    message = str(failure.value)
    assert f"MariaDB at {lab.primary.address} exited with status" in message
    assert f"command: mariadbd --defaults-file={taken.primary.mariadb.paths.my_cnf}" in message
    assert f"last lines of {taken.primary.mariadb.paths.error_log}" in message
    assert "Address already in use" in message


def test_a_failed_install_says_why_and_the_next_up_installs_afresh(fresh_lab):
    conf_d = fresh_lab.primary.mariadb.paths.conf_d
    conf_d.mkdir(parents=True)
    broken = conf_d / "zz-broken.cnf"
    # Fails half-way through mariadb-install-db, as a temporary table lost to another server did.
    broken.write_text("[mysqld]\ntmp_disk_table_size = 1\n")
    with pytest.raises(LabError) as failure:
        fresh_lab.up()
    message = str(failure.value)
    assert f"command: mariadb-install-db --defaults-file={fresh_lab.primary.mariadb.paths.my_cnf}" in message
    assert "The table '(temporary)' is full" in message
    assert f"last lines of {fresh_lab.primary.mariadb.paths.error_log}" in message

    broken.unlink()
    fresh_lab.up()
    for host in fresh_lab.hosts.values():
        assert root_sql(host, "SELECT COUNT(*) FROM mysql.global_priv WHERE User = 'root'") == ((1,),)
