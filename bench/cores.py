"""How the paid call's ratio to the unpaid endpoint moves when the serving workers have
cores of their own, in one run: the same servers measured in two layouts, interleaved.

- shared: every process on every core, as bench.gateway runs (the goals' layout). On 2
  cores the workers share them with wrk, the indexer, anvil and PostgreSQL, so a
  receipt's work outside the worker (the database writing it, the indexer building its
  batch) takes CPU the unpaid endpoint never pays for.
- split: the servers' processes pinned to `--server-cpus` (default the first core),
  everything else (wrk, the indexer, PostgreSQL, anvil, this process) to the rest: the
  shape of a deployment whose database and indexer run beside, not on, the gateway's
  cores. Paid and unpaid then compete for the same core(s) with the same load
  generator, and the ratio is what the workers' own work costs.

The split layout isolates the workers' own cost from what PostgreSQL and the indexer
take from shared cores; it adds no cores (the servers get one of these machines' two),
so how the paid call scales past 2 cores stays unmeasured here.

Each layout is judged as bench.gateway's goals are (bench/paired.py: alternating slices,
the median of each paid slice over its neighbours), under the shipped granian, iris,
receipts on; the split layout charges no indexer or database CPU back (it is not on the
servers' cores), and the table shows how busy each side's cores were, so a split run
bound by the other side shows as such.

    .venv/bin/python -m bench.cores [--pairs 4] [--pair-seconds 5] [--conns 1,16]
        [--server-cpus 0] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.gateway import MODEL, check_indexers, prepare, start, start_indexers, stop_all
from bench.paired import alternate, quartiles
from marketplace.devstack.serve import Server

GOAL = 0.85


def pin(pids: list[int], cpus: set[int]) -> None:
    """Every thread of these process trees onto `cpus`. Each thread is pinned before its
    children are read, so a child forked meanwhile inherits the mask or is listed; the
    trees are walked again until a walk moves nothing (a thread started mid-walk)."""
    for _ in range(10):
        moved, stack = 0, list(pids)
        while stack:
            pid = stack.pop()
            try:
                threads = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
            except FileNotFoundError:
                continue  # ended meanwhile
            for thread in threads:
                try:
                    if os.sched_getaffinity(thread) != cpus:
                        os.sched_setaffinity(thread, cpus)
                        moved += 1
                    children = Path(f"/proc/{pid}/task/{thread}/children").read_text()
                except (ProcessLookupError, FileNotFoundError):
                    continue  # a thread that ended meanwhile
                stack += [int(c) for c in children.split()]
        if not moved:
            return
    raise RuntimeError(f"threads of {pids} kept escaping the pin to CPU {sorted(cpus)}")


def busy() -> dict[int, tuple[int, int]]:
    """Per CPU: (busy, total) jiffies so far (/proc/stat)."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks = [int(f) for f in fields]
            idle = ticks[3] + ticks[4]  # idle, iowait
            out[int(name[3:])] = (sum(ticks[:8]) - idle, sum(ticks[:8]))
    return out


@contextmanager
def cores_busy(cpus: set[int], into: list[float]) -> Iterator[None]:
    """Append how busy `cpus` were, on average, while the block ran (0..1)."""
    before = busy()
    yield
    after = busy()
    used = sum(after[c][0] - before[c][0] for c in cpus)
    total = sum(after[c][1] - before[c][1] for c in cpus)
    into.append(used / max(total, 1))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=4, help="paid slices per alternation")
    parser.add_argument("--pair-seconds", type=int, default=5)
    parser.add_argument("--conns", default="1,16", help="connections, comma-separated")
    parser.add_argument("--server-cpus", default="0", help="the servers' cores in the split")
    parser.add_argument("--rounds", type=int, default=2, help="alternations per layout")
    args = parser.parse_args()
    every = os.sched_getaffinity(0)
    servers_on = {int(c) for c in args.server_cpus.split(",")}
    rest = every - servers_on
    if not servers_on < every or not rest:
        raise SystemExit(f"--server-cpus must leave a core of {sorted(every)} for the rest")
    conns = [int(c) for c in args.conns.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-cores-"))
    m = prepare(work)
    indexers: dict[str, subprocess.Popen[bytes]] = {}
    running: list[Server] = []
    # (layout, database, conns) -> ratios, paid req/s, unpaid req/s, server/rest busy
    rows: dict[tuple[str, str, int], dict[str, list[float]]] = {}
    try:
        idle = start_indexers(m, work, indexers)
        unpaid_env = {"BENCH_MODEL": str(MODEL)}
        unpaid = start("granian", "bench.unpaid_app:create_app()", unpaid_env,
                       work / "unpaid.log", "/")  # fmt: skip
        running.append(unpaid)
        paid: dict[str, Server] = {}
        for name in m.databases:
            env = m.env(name, MODELMARKET_RECEIPTS="true")
            paid[name] = start("granian", "app:create_app()", env, work / f"paid-{name}.log",
                               "/v2/health/ready")  # fmt: skip
            running.append(paid[name])
        servers = [s.process.pid for s in running]
        others = [os.getpid(), m.node.process.pid, *(p.pid for p in indexers.values())]
        if m.pg is not None:
            others.append(m.pg.pid)
        body, headers = m.bodies["iris"]
        for _ in range(args.rounds):
            for layout in ("shared", "split"):
                # the others first: this process's tree holds the servers too
                pin(others, rest if layout == "split" else every)
                pin(servers, servers_on if layout == "split" else every)
                for name, server in paid.items():
                    url = f"{server.url}/v2/models/{m.model_ids['iris']}/infer"
                    auth = {**headers, "Authorization": f"Bearer {m.keys_of[name]}"}
                    for c in conns:
                        check_indexers(indexers, work)
                        row = rows.setdefault((layout, name, c), {})
                        on_servers, on_rest = (
                            row.setdefault("servers busy", []),
                            row.setdefault("rest busy", []),
                        )
                        # shared: the goals' own charging (the indexer's and PostgreSQL's
                        # CPU in an unpaid slice goes back to the paid one); split: none
                        # of theirs is on the servers' cores
                        shared = layout == "shared"
                        with cores_busy(servers_on, on_servers), cores_busy(rest, on_rest):
                            pairs = alternate(
                                (url, body, auth), (f"{unpaid.url}/infer", body, headers), c,
                                args.pair_seconds, args.pairs, work,
                                indexers[name].pid if shared else None, idle[name],
                                m.pg_pid if shared and name == "postgresql" else None,
                            )  # fmt: skip
                        row.setdefault("ratios", []).extend(pairs.ratios())
                        row.setdefault("paid", []).extend(r for r, _ in pairs.paid)
                        row.setdefault("unpaid", []).extend(r for r, _ in pairs.unpaid)
    finally:
        stop_all(running, indexers, m, work)
    report(rows, args, servers_on, rest)
    return 0


def cpus(which: set[int]) -> str:
    """CPUs as the table names them: "0", "1,2,3"."""
    return ",".join(str(c) for c in sorted(which))


def report(
    rows: dict[tuple[str, str, int], dict[str, list[float]]],
    args: argparse.Namespace,
    servers_on: set[int],
    rest: set[int],
) -> None:
    """The table, the split layout's ratio against the shared one's, and the goal lines."""
    print(
        f"granian (shipped), iris, receipts on, 2 workers x 8 threads; {args.rounds} rounds of"
        f" {args.pairs} paid slices of {args.pair_seconds} s per cell, layouts interleaved;"
        f" split: servers on CPU {sorted(servers_on)}, the rest on CPU {sorted(rest)}"
    )
    print(
        f"{'layout':<8}{'database':<12}{'conns':>6}{'x unpaid q1 / median / q3':>28}"
        f"{'paid req/s':>12}{'unpaid req/s':>14}{'CPU ' + cpus(servers_on) + ' busy':>14}"
        f"{'CPU ' + cpus(rest) + ' busy':>14}"
    )
    medians: dict[tuple[str, str, int], float] = {}
    for (layout, name, c), row in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        q1, median, q3 = quartiles(row["ratios"])
        medians[layout, name, c] = median
        paid, unpaid = statistics.median(row["paid"]), statistics.median(row["unpaid"])
        on_servers = statistics.mean(row["servers busy"])
        on_rest = statistics.mean(row["rest busy"])
        print(
            f"{layout:<8}{name:<12}{c:>6}{q1:>14.2f} / {median:.2f} / {q3:.2f}"
            f"{paid:>12,.0f}{unpaid:>14,.0f}{on_servers:>14.0%}{on_rest:>14.0%}"
        )
    print(
        "(busy: the mean share of those cores in use over the cell's alternations; in the"
        " split layout the first are the servers', the second the rest's)"
    )
    for (layout, name, c), median in medians.items():
        if layout == "split":
            shared = medians.get(("shared", name, c))
            versus = f", {median / shared:.2f}x the shared layout's" if shared else ""
            print(f"split/{name}/{c}: paid/unpaid {median:.2f}{versus}")
    for (layout, name, c), median in medians.items():
        if layout == "split":
            print(
                f"goal: paid_vs_unpaid_{name}_{c}conn_servers_own_core = {median:.2f}"
                f" (target >= {GOAL}) {'met' if median >= GOAL else 'missed'}"
            )


if __name__ == "__main__":
    raise SystemExit(main())
