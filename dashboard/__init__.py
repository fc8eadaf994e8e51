"""Tenant web dashboard (Flask): a client of the public gRPC API. Placeholder until its issue lands."""
