"""The test labs' addresses: runs side by side and their pytest-xdist workers never share a server."""

from tests.helpers import lab_addr_prefix


def test_two_runs_side_by_side_never_share_lab_addresses():
    # The README's second run (SEAFBACKUP_TEST_ADDR_PREFIX=127.0.1.2) beside a default run, each on up to
    # four workers or none.
    prefixes = [lab_addr_prefix(prefix, worker)
                for prefix in ("127.0.0.2", "127.0.1.2") for worker in ("", "gw0", "gw1", "gw2", "gw3")]
    assert len(set(prefixes)) == len(prefixes)


def test_without_workers_the_prefix_is_the_one_given():
    assert lab_addr_prefix("127.0.10.2", "") == "127.0.10.2"
