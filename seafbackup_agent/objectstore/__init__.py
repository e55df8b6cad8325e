"""Seafile object storage beyond a filesystem: S3 buckets and Ceph pools, as seafile.conf names them."""
