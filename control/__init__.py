"""The control plane: public gRPC API, state in etcd, Celery tasks, scheduling, the cloudctl CLI."""
