"""The public gRPC API (and the agent-facing HostService) of the control plane."""
