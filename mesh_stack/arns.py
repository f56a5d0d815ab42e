"""The shapes of the AWS ARNs users give us, one pattern each (config keys and services' files).

Partitions: `aws` and every `aws-...` one (aws-cn, aws-us-gov, the ISO partitions, aws-eusc).

- Secrets Manager: the complete ARN, with the 6-character suffix Secrets Manager adds to the
  name; IAM grants on exactly that secret, and ECS takes it from another account or Region.
- KMS keys: single-Region key IDs are a UUID; multi-Region key IDs are `mrk-` and 32 hex
  digits (AWS KMS API reference, ReplicateKey KeyId: "mrk-1234abcd12ab34cd56ef1234567890ab"),
  a natural choice for a secret replicated to or read from another Region.
"""

from __future__ import annotations

import re

SECRET_ARN = re.compile(
    r"^arn:(?P<partition>aws[a-z-]*):secretsmanager:(?P<region>[a-z0-9-]+):"
    r"(?P<account>\d{12}):secret:(?P<name>[A-Za-z0-9/_+=.@-]{1,512}-[A-Za-z0-9]{6})$"
)
KMS_KEY_ARN = re.compile(
    r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/"
    r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})$"
)
