"""Ports that cross the network between the Consul servers, the NLB and the on-prem hosts.

One place for the numbers three parts must agree on: the mesh services (which listeners a
host-mode sidecar opens on the host), the Consul fleet (which ports consul-esm on the servers
may reach on-prem, and which ports on-prem hosts may reach on the NLB) and the documentation
of the on-prem firewall.
"""

from __future__ import annotations

# Consul servers, behind the internal NLB: HTTPS API and gRPC-TLS (xDS).
CONSUL_HTTPS = 8501
CONSUL_GRPC_TLS = 8503
# Plaintext listeners, opened only with `plaintext_listeners`.
CONSUL_HTTP = 8500
CONSUL_GRPC = 8502

# Envoy listeners that other hosts and the Consul servers dial on a host-mode mesh task: the
# public (mTLS) listener and the expose listener that serves the app's health path. Every
# host-mode service's proxy and expose ports lie in this inclusive range, so the servers'
# egress to on-prem and the hosts' firewall open exactly this range and nothing else.
ENVOY_INBOUND_PORTS = (20000, 20999)

# Bridge mode (an opt-in) publishes ports on dynamic host ports instead: the ECS agent picks
# them from ECS_DYNAMIC_HOST_PORT_RANGE, by default the kernel's ephemeral range
# /proc/sys/net/ipv4/ip_local_port_range, 32768-60999 on Linux (aws/amazon-ecs-agent README,
# "ECS_DYNAMIC_HOST_PORT_RANGE"; ECS developer guide, task definition parameters, "hostPort").
# A host that changes either setting must open its own range instead.
BRIDGE_DYNAMIC_HOST_PORTS = (32768, 60999)

# Host ports ECS reserves on every container instance, so a task that asks for one is never
# placed: 22 (SSH), 2375 and 2376 (Docker) and 51678-51680 (the ECS container agent) (ECS
# developer guide, task definition parameters, `hostPort`: "The default reserved ports are 22
# for SSH, the Docker ports 2375 and 2376, and the Amazon ECS container agent ports
# 51678-51680"; the API reference's PortMapping says the same).
ECS_RESERVED_HOST_PORTS = frozenset({22, 2375, 2376, 51678, 51679, 51680})


def fixed_host_port_problem(port: int) -> str | None:
    """Why `port` cannot be a fixed host port of a host-mode task, or None if it can.

    Beside the reserved ports, the same page says not to ask for a host port in the ephemeral
    range, which ECS hands out to bridge tasks; the kernel also takes outgoing connections'
    source ports from it, so even a loopback listener there (an app or upstream port, which is
    not port-mapped) can find its port taken and fail to bind.
    """
    if port in ECS_RESERVED_HOST_PORTS:
        return (
            f"{port} is reserved by ECS on every container instance (22, 2375, 2376, "
            "51678-51680: SSH, Docker, the ECS agent), so no task holding it is ever placed"
        )
    low, high = BRIDGE_DYNAMIC_HOST_PORTS
    if low <= port <= high:
        return (
            f"{port} lies in the ephemeral range {low}..{high}, which ECS hands out to bridge "
            f"tasks and the kernel to outgoing connections; pick a port below {low}"
        )
    return None
