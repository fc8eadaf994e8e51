"""Tenant web dashboard (Flask): a client of the public gRPC API, like cloudctl.

It never reads the cloud's etcd or Redis; its only state of its own is the
server-side session store (dashboard.sessions)."""
