"""The lab: two real MariaDB servers and two Seafile hosts on loopback, plus a Seafile data writer.

A tool for the tests and the demo, not part of the product.
"""
