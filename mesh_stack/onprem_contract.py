"""What the stack and the on-prem side of the network path must agree on.

Pure and standard-library only, so `tools/preflight.py` can print it without loading CDK:
the tunnel algorithms the VPN accepts (the device must offer them), the stack outputs an
operator reads after the deploy, and how to fetch the VPN device configuration.
"""

from __future__ import annotations

# The ECS Anywhere installer every host runs (ECS developer guide, "Registering an external
# instance to a cluster"); preflight lists its host for the firewall.
INSTALL_SCRIPT = "https://amazon-ecs-agent.s3.amazonaws.com/ecs-anywhere-install-latest.sh"

# Tunnel parameters both tunnels accept (AWS::EC2::VPNConnection VpnTunnelOptionsSpecification;
# cfn-lint checks each value against the resource schema). AWS's defaults also allow IKEv1,
# AES-128, SHA-1 and Diffie-Hellman groups 2 and 5; these keep IKEv2 with AES-256, SHA-2 and
# DH groups 14-18 (MODP, 2048-8192 bit) and 19-21 (ECP, 256-521 bit). Groups 22-24, which the
# schema also accepts, are RFC 5114's MODP groups with small prime-order subgroups (§2.1-2.3:
# 22 is a 1024-bit MODP group with a 160-bit subgroup; 23 and 24 are 2048-bit with 224- and
# 256-bit subgroups): left out, so no tunnel can negotiate a 1024-bit DH.
IKE_VERSIONS = ("ikev2",)
ENCRYPTION = ("AES256", "AES256-GCM-16")
INTEGRITY = ("SHA2-256", "SHA2-384", "SHA2-512")
DH_GROUPS = (14, 15, 16, 17, 18, 19, 20, 21)

# Stack outputs of the two paths (stable names: operators and scripts read them).
OUTPUT_VPN_CONNECTION = "OnPremVpnConnectionId"
OUTPUT_VPN_DEVICE_CONFIGURATION = "OnPremVpnDeviceConfiguration"
OUTPUT_TGW_ATTACHMENT = "OnPremTransitGatewayAttachmentId"


def device_config_hint(vpn_connection_id: str) -> str:
    """Console path and CLI commands that download the device configuration of a connection.

    GetVpnConnectionDeviceTypes lists the devices AWS has sample configurations for;
    GetVpnConnectionDeviceSampleConfiguration takes the connection ID, that device type ID
    and the IKE version (EC2 API reference).
    """
    return (
        "Console: VPC > Site-to-Site VPN connections > "
        f"{vpn_connection_id} > Download configuration. CLI: aws ec2 "
        "get-vpn-connection-device-types (pick your device's VpnConnectionDeviceTypeId), then "
        "aws ec2 get-vpn-connection-device-sample-configuration --vpn-connection-id "
        f"{vpn_connection_id} --vpn-connection-device-type-id <type-id> "
        "--internet-key-exchange-version ikev2 --output text"
    )
