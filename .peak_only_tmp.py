"""Before/after peak of one in-sync pass at BENCH_SCALE_TASKS (figure 9's world)."""
import resource
from bench import reconcile_scale as r
from bench.report import quiet
from bench.world import runtime

ecs = r.build_ecs(r.TASKS)
with quiet(), r.remote_double(r.TASKS) as remote:
    rt = runtime(remote.url, ecs)
    remote.ask("verify")
    cost = r.run_pass(remote, ecs, rt, traced=True)
print(f"tasks {r.TASKS}: in-sync tracemalloc peak {cost.peak_bytes / 2**20:.1f} MiB; "
      f"requests {cost.consul_requests}; calls {dict(cost.aws_calls)}; "
      f"ru_maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
