"""Logical IDs of stateful resources are a contract: renaming one replaces (and empties) it.

A refactor that moves a construct changes these IDs; CloudFormation would then create a new
secret, key or bucket and delete the old one, losing the Consul CA, tokens or snapshots.
If a change here is intended, write the migration in the commit message.

The hosts' teardown is pinned too, though it holds no data: a new logical ID makes
CloudFormation delete the old resource after creating the new one, and its Delete deregisters
every host of the cluster (lambda/activation/teardown.py).
"""

from __future__ import annotations

import pytest

from tests.infra.conftest import Synthesized

PINNED = {
    "AWS::AutoScaling::AutoScalingGroup": {"ConsulFleetServersASGF181F20D"},
    "AWS::EC2::VPC": {"NetworkVpc7FB7348F"},
    "AWS::ECS::Cluster": {"EcsAnywhereClusterAE2FDE4E"},
    "Custom::EcsAnywhereTeardown": {"EcsAnywhereTeardown44783530"},
    "AWS::ElasticLoadBalancingV2::LoadBalancer": {"ConsulFleetLoadBalancer23568C2A"},
    "AWS::KMS::Key": {"ConsulFleetKey16BD162A", "KeysKeyFE944A9C"},
    "AWS::S3::Bucket": {"ConsulFleetAccessLogs436F84EB", "ConsulFleetSnapshotBucket4E7E7213"},
    "AWS::SQS::Queue": {
        "RegistrarDeadLetterQueue4F3A3844",
        "RegistrarQueue44C82653",
        "RegistrarRuleDeadLetterQueueF6987FAF",
    },
    "AWS::SecretsManager::Secret": {
        "ConsulFleetAgentToken64190A01",
        "ConsulFleetCaCertificate219D15BB",
        "ConsulFleetCertificateAuthorityE0B1AF02",
        "ConsulFleetEsmTokenDF3A2857",
        "ConsulFleetGossipKey7BC9C34A",
        "ConsulFleetManagementTokenDB7F4636",
        "ConsulObjectsBackendSidecarTokenSecret19FAC363",
        "ConsulObjectsFrontendSidecarTokenSecret8DC30D5C",
        "ConsulObjectsOperatorTokenSecret5BBFC453",
        "ConsulObjectsRegistrarTokenSecret9946049C",
        "EcsAnywhereActivationSecretDAA22C0F",
    },
}


@pytest.mark.parametrize("resource_type", sorted(PINNED))
def test_stateful_logical_ids_are_stable(synthesized: Synthesized, resource_type: str) -> None:
    (template,) = synthesized.templates().values()
    found = {
        logical_id
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == resource_type
    }
    assert found == PINNED[resource_type]
