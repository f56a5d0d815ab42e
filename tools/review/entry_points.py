"""Entry points the internet reaches without a security group: function URLs, APIs, CDNs.

"The internet reaches nothing" cannot be said from security-group rules and load balancer
schemes alone (review M6). These resources are reachable from the internet by design:

- `AWS::Lambda::Url` with `AuthType: NONE`: anyone may invoke the function through its URL
  once a resource policy allows `lambda:InvokeFunctionUrl` to `*` (Lambda Developer Guide,
  "Control access to Lambda function URLs"); with `AWS_IAM` only signed callers the policies
  allow, so it is not listed;
- `AWS::ApiGateway::RestApi` unless its endpoint type is `PRIVATE`, and every
  `AWS::ApiGatewayV2::Api` (HTTP and WebSocket APIs have public endpoints only) (API Gateway
  Developer Guide, "API endpoint types");
- `AWS::CloudFront::Distribution`.

Public resource policies (a bucket, queue or topic open to `*`) are judged with the other
resource policies (section 4 and A.7), not here.
"""

from __future__ import annotations

from dataclasses import dataclass

from tools.review.load import Assembly
from tools.review.model import Res
from tools.review.refs import flatten


@dataclass(frozen=True)
class EntryPoint:
    res: Res
    what: str


def _rest_api(props: dict[str, object]) -> str:
    config = props.get("EndpointConfiguration")
    types = config.get("Types") if isinstance(config, dict) else None
    if isinstance(types, list) and [flatten(t) for t in types] == ["PRIVATE"]:
        return ""
    return "API Gateway REST API, public endpoint"


def entry_points(assembly: Assembly) -> list[EntryPoint]:
    found: list[EntryPoint] = []
    for stack in assembly.stacks:
        for logical_id, resource in stack.resources.items():
            kind = resource.get("Type")
            props = resource.get("Properties") or {}
            what = ""
            if kind == "AWS::Lambda::Url" and flatten(props.get("AuthType")) == "NONE":
                what = "Lambda function URL without authentication (AuthType NONE)"
            elif kind == "AWS::ApiGateway::RestApi":
                what = _rest_api(props)
            elif kind == "AWS::ApiGatewayV2::Api":
                what = f"API Gateway {flatten(props.get('ProtocolType') or 'HTTP')} API, public"
            elif kind == "AWS::CloudFront::Distribution":
                what = "CloudFront distribution"
            if what:
                found.append(EntryPoint(stack.res(logical_id), what))
    return found
