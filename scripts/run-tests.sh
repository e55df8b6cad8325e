#!/usr/bin/env bash
# `make test`'s tests: every test file on N pytest-xdist workers (the longest files first: tests/conftest.py) and,
# beside them, with the backup's objects in S3 on the lab Ceph (--backup-storage=s3) and on lab addresses of their
# own: the crash test and verify's test once more, unchanged, and the failover drill, which runs only there (the
# filesystem's failover runs in tests/hosts and tests/cluster). Exits non-zero when either run failed.
set -uo pipefail
cd "$(dirname "$0")/.."
jobs=${1:-2}
bin=.venv/bin
s3_tests=(tests/faults/test_crashes.py::test_kill_9_at_random_points_of_first_syncs
          tests/integration/test_verify.py::test_verify_finds_a_whole_backup_ok_and_names_what_is_behind_missing_or_corrupt
          tests/integration/test_failover.py)
s3_log=.s3-backup-tests.log
SEAFBACKUP_FAULT_KILL_POINTS=6 SEAFBACKUP_TEST_ADDR_PREFIX=127.0.9.2 SEAFBACKUP_TEST_CEPH_ADDR=127.0.9.71 \
    "$bin/pytest" -p no:xdist --backup-storage=s3 "${s3_tests[@]}" > "$s3_log" 2>&1 &
s3_pid=$!
"$bin/pytest" -n "$jobs" --dist loadfile --no-loadscope-reorder --durations=25 \
    --ignore=tests/integration/test_failover.py
main_rc=$?
wait "$s3_pid"
s3_rc=$?
echo "== the same tests with the backup on S3 (${s3_log}):"
if [ "$s3_rc" -eq 0 ]; then tail -n 3 "$s3_log"; else cat "$s3_log"; fi
[ "$main_rc" -eq 0 ] && [ "$s3_rc" -eq 0 ]
