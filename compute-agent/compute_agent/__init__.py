"""The compute agent: one per host; drives the hypervisor through a driver and
reports the host's capacity and its instances to the control plane."""

import os

# gRPC's fork support restarts its pollers in a forked child. libvirt's embedded
# QEMU driver (qemu:///embed, in this process) forks to start QEMU and closes
# every descriptor before exec: the restarted poller then hits EBADF and aborts
# the child ("Child process (...qemu-system-x86_64...) unexpected fatal signal 6",
# seen here with grpcio 1.85). The agent never forks to keep using gRPC, so it
# goes without. Read once, when gRPC initialises: it must be set before grpc
# is imported, hence here, in the package every agent module is under.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
