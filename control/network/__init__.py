"""Tenant networks: records, IPAM, floating IPs, and each host's desired state of them."""
