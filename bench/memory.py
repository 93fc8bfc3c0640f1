"""Peak memory of `prebuildd run` on a 5,000-preset fleet, next to the bare imports.

Measured in this run from /proc/<pid>/status (VmHWM = peak resident set, VmRSS = resident now,
both in MiB):

* `python -c 'import sys; ...'`: the interpreter alone;
* `python -c 'import prebuildd.service; ...'`: the service's code and libraries imported
  (psycopg, anyio, OpenTelemetry, prometheus-client...), idle;
* `python -m prebuildd.cli run --database-url ... --sweep-interval 5s --metrics-addr
  127.0.0.1:0`: the real service on a clone of the issue's fleet (1,000 templates / 5,000
  presets / 50,000 workspaces), through its start (migrate, listener, startup sweep with its
  writes) and 22 sweeps of every template, /metrics scraped after each sweep as Prometheus
  would. Its resident set is read every 250 ms and before each sweep, to show whether and
  where it stops growing.

Target: peak RSS of the service <= 150 MB.

    PYTHONPATH=service python -m bench.memory [--quick] [--reuse] [--sweeps N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench._common import common_args, load, print_header, table, verdict
from bench._server import BenchServer, bench_server, print_server
from bench.fleet import SCALES, ensure_fleet
from bench.reaction import REPO, ServiceProcess, service_env

TARGET_PEAK_MB = 150.0
SWEEP_SECONDS = 5.0
SAMPLE_EVERY = 0.25


@dataclass(frozen=True, slots=True)
class Memory:
    """MiB of one process."""

    rss: float
    hwm: float


def read_memory(pid: int) -> Memory:
    fields: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024  # kB -> MiB
    return Memory(fields["VmRSS"], fields["VmHWM"])


def idle_import(code: str) -> Memory:
    """Run `code`, then wait on stdin; measure once it said it is ready."""
    script = f"{code}\nprint('ready', flush=True)\nimport sys\nsys.stdin.read()\n"
    with subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=service_env(),
        cwd=str(REPO),
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{code!r} did not start")
        memory = read_memory(proc.pid)
        proc.stdin.close()
        proc.wait(timeout=10)
    return memory


# ---------------------------------------------------------------------------------------------
# Watching running services
# ---------------------------------------------------------------------------------------------


def metrics_url(service: ServiceProcess) -> str | None:
    for line in list(service.lines):
        addr = line.fields.get("addr")
        if str(line.fields.get("msg", "")).startswith("serving /metrics") and addr:
            return f"http://{addr}/metrics"
    return None


def scrape(url: str | None) -> int:
    if url is None:
        return 0
    with urllib.request.urlopen(url, timeout=10) as response:
        return len(response.read())


@dataclass
class Watched:
    """What one service process did to its memory."""

    name: str
    service: ServiceProcess
    startup: float = 0.0  # seconds until its startup sweep settled
    after_startup: Memory | None = None
    per_sweep: list[Memory] = field(default_factory=list)  # read before each further sweep
    samples: list[float] = field(default_factory=list)  # VmRSS every SAMPLE_EVERY
    final: Memory | None = None
    scraped_bytes: int = 0


def watch(services: Sequence[Watched], templates: int, sweeps: int) -> None:
    """Wait for every startup sweep, then read memory for `sweeps` sweep periods."""
    for w in services:
        w.startup = w.service.wait_settled(templates=templates, quiet=1.0, timeout=240)
    for w in services:
        w.after_startup = read_memory(w.service.pid)
    urls = [metrics_url(w.service) for w in services]
    next_mark = time.monotonic() + SWEEP_SECONDS
    marks = 0
    while marks < sweeps:
        for w in services:
            if not w.service.alive():
                raise RuntimeError(f"{w.name} exited")
            w.samples.append(read_memory(w.service.pid).rss)
        if time.monotonic() >= next_mark:
            marks += 1
            next_mark += SWEEP_SECONDS
            for w, url in zip(services, urls, strict=True):
                w.per_sweep.append(read_memory(w.service.pid))
                w.scraped_bytes = scrape(url)
        time.sleep(SAMPLE_EVERY)
    for w in services:
        w.final = read_memory(w.service.pid)


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def report(bare: Memory, imported: Memory, watched: Sequence[Watched], sweeps: int) -> bool:
    rows: list[Sequence[str]] = [
        ["process", "RSS MiB", "peak (VmHWM) MiB"],
        ["python (interpreter only)", f"{bare.rss:.1f}", f"{bare.hwm:.1f}"],
        ["python -c 'import prebuildd.service'", f"{imported.rss:.1f}", f"{imported.hwm:.1f}"],
    ]
    for w in watched:
        assert w.after_startup is not None and w.final is not None
        rows.append([f"{w.name}, startup sweep settled", f"{w.after_startup.rss:.1f}",
                     f"{w.after_startup.hwm:.1f}"])  # fmt: skip
        rows.append([f"{w.name}, after {sweeps} more sweeps", f"{w.final.rss:.1f}",
                     f"{w.final.hwm:.1f}"])  # fmt: skip
    print(table(rows))
    for w in watched:
        _print_growth(w, imported)
    service = watched[0]
    assert service.final is not None
    met = service.final.hwm <= TARGET_PEAK_MB
    print(
        f"target peak RSS <= {TARGET_PEAK_MB:.0f} MB ({service.name}): {verdict(met)} "
        f"({service.final.hwm:.1f} MiB)"
    )
    return met


def _print_growth(w: Watched, imported: Memory) -> None:
    assert w.final is not None
    marks = ", ".join(f"{x.rss:.0f}" for x in w.per_sweep)
    growth = w.per_sweep[-1].rss - w.per_sweep[0].rss if len(w.per_sweep) > 1 else 0.0
    print(
        f"{w.name}: RSS before each sweep (MiB) {marks}; first -> last {growth:+.1f} MiB; "
        f"peak {w.final.hwm - imported.hwm:+.1f} MiB above the idle import; startup settled "
        f"after {w.startup:.1f} s; /metrics body {w.scraped_bytes:,} bytes"
    )


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def run(server: BenchServer, args: argparse.Namespace) -> None:
    name = "quick" if args.quick else "reaction"
    spec = SCALES[name]
    sweeps = args.sweeps or (4 if args.quick else 22)
    dbname = ensure_fleet(server, name, spec, reuse=args.reuse)
    clone = f"{dbname}_mem"
    url = server.clone(dbname, clone)
    try:
        bare = idle_import("import sys")
        imported = idle_import("import prebuildd.service")
        options = ["--sweep-interval", "5s", "--metrics-addr", "127.0.0.1:0"]
        watched = [Watched("prebuildd run", ServiceProcess(url, options))]
        for w in watched:
            print(f"{w.name}: {w.service.command(url)}")
            w.service.start()
        try:
            watch(watched, spec.templates, sweeps)
        finally:
            for w in watched:
                print(f"{w.name} stopped (exit code {w.service.stop()})")
        report(bare, imported, watched, sweeps)
    finally:
        server.drop(clone)
    print(f"after the run: {load()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    common_args(parser)
    parser.add_argument("--sweeps", type=int, default=0, help="sweeps to watch (default 22)")
    args = parser.parse_args()
    print_header("bench.memory")
    with bench_server() as server:
        print_server(server)
        run(server, args)


if __name__ == "__main__":
    main()
