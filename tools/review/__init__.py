"""Security review of a synthesized cloud assembly: `python -m tools.review cdk.out`.

Reads only what `cdk synth` wrote (manifest, templates, construct metadata and the CDK
validation report), so REVIEW.md describes what `cdk deploy` will create, not what the code
intends. `tools.review.nag.unacknowledged_findings` is the cdk-nag gate's single source.
"""
