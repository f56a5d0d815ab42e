"""CDK constructs of the Consul mesh for ECS Anywhere."""
