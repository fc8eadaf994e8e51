"""Runs a whole cloud on this one machine: used by `make up`/`make down` and by
the integration tests (which start their own copy on free ports)."""
