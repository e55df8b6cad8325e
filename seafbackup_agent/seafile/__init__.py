"""Seafile's formats and nothing else: ids, objects, storage backends, library rows."""
