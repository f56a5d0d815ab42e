"""Internals of the Consul HTTP API double. Import ``ConsulDouble`` from ``tests.consul_double``.

errors, decode: how Consul's Go code fails and decodes; bexpr: the ``?filter=`` subset;
records, store: catalog/KV/config/ACL state in Consul's JSON shapes; routing: request/reply types
and the route table; catalog, kv, txn, config, acl: one module per family of endpoints.
"""
