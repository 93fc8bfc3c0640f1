"""Peak memory of `prebuildd run` on a 5,000-preset fleet, next to the bare imports.

Measured in this run from /proc/<pid>/status (VmHWM = peak resident set, VmRSS = resident now,
both in MiB):

* `python -c 'import sys; ...'`: the interpreter alone;
* `python -c 'import prebuildd.service; ...'`: the service's code and libraries imported
  (psycopg, anyio, OpenTelemetry, prometheus-client...), idle;
* `python -m prebuildd.cli run --database-url ... --sweep-interval 5s --metrics-addr
  127.0.0.1:0 --log-level debug`: the real service on a clone of the issue's fleet (1,000
  templates / 5,000 presets / 50,000 workspaces), through its start (migrate, listener,
  startup sweep with its writes) and 22 sweeps of every template, /metrics scraped after
  each sweep as Prometheus would. Its resident set is read every 250 ms and before each
  sweep, to show whether and where it stops growing.

Target: peak RSS of the service <= 150 MB. The figure only counts if the service did its work
while it was measured: its log must show the periodic sweeps -- every template reconciled
once per sweep period watched, but the first (the `templates` of its `reconciled` lines; the
service runs with --log-level debug because a quiet sweep logs at debug, and the batch's
`trigger` cannot tell: a batch holding one template with a timer is named `timer`) --, its
/metrics no reconcile error, and its log no error line (level=error, a failed callback, a
crashed reconcile, a traceback); otherwise the verdict is MISSED, and the bench exits
non-zero on MISSED.

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

from prometheus_client.parser import text_string_to_metric_families

from bench._common import ServiceErrors, common_args, load, print_header, table, verdict
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


@dataclass(frozen=True, slots=True)
class Scrape:
    """One /metrics scrape: its size, and whether any reconcile failed so far."""

    size: int
    reconcile_errors: float  # prebuildd_reconcile_errors_total, every kind


def scrape(url: str | None) -> Scrape:
    if url is None:
        return Scrape(0, 0.0)
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read()
    errors = sum(
        sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == "prebuildd_reconcile_errors_total"
    )
    return Scrape(len(body), errors)


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
    last_scrape: Scrape | None = None  # after the last sweep period watched
    window: tuple[float, float] = (0.0, 0.0)  # monotonic start and end of the watch

    @property
    def scraped_bytes(self) -> int:
        return self.last_scrape.size if self.last_scrape else 0


def watch(services: Sequence[Watched], templates: int, sweeps: int) -> None:
    """Wait for every startup sweep, then read memory for `sweeps` sweep periods."""
    for w in services:
        w.startup = w.service.wait_settled(templates=templates, quiet=1.0, timeout=240)
    for w in services:
        w.after_startup = read_memory(w.service.pid)
    urls = [metrics_url(w.service) for w in services]
    started = time.monotonic()
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
                w.last_scrape = scrape(url)
        time.sleep(SAMPLE_EVERY)
    for w in services:
        w.final = read_memory(w.service.pid)
        w.window = (started, time.monotonic())


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the service did while its memory was read."""

    reconciled: int  # templates reconciled during the watch (sum over `reconciled` lines)
    wanted: int
    reconciles: int  # `reconciled` lines during the watch
    reconcile_errors: float
    errors: ServiceErrors

    @property
    def met(self) -> bool:
        return self.reconciled >= self.wanted and self.reconcile_errors == 0

    def summary(self) -> str:
        return (
            f"work done while measured: {self.reconciled:,} templates reconciled in "
            f"{self.reconciles} reconciles (wanted >= {self.wanted:,}: every template once per "
            f"sweep period but the first), {self.reconcile_errors:.0f} reconcile errors: "
            f"{verdict(self.met)}; {self.errors.summary()}"
        )


def evidence(w: Watched, templates: int, sweeps: int) -> Evidence:
    """Each periodic sweep reconciles every template; timers and events add a few, never a
    whole fleet per period."""
    lines = list(w.service.lines)
    start, end = w.window
    during = [
        line for line in lines if line.reconciled and start <= line.at <= end
    ]
    reconciled = sum(int(line.fields.get("templates") or 0) for line in during)
    errors = ServiceErrors().scan(line.fields for line in lines)
    last = w.last_scrape
    return Evidence(
        reconciled,
        max(1, (sweeps - 1) * templates),
        len(during),
        last.reconcile_errors if last is not None else 0.0,
        errors,
    )


def report(
    bare: Memory,
    imported: Memory,
    watched: Sequence[Watched],
    sweeps: int,
    proofs: Sequence[Evidence],
) -> bool:
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
    for w, proof in zip(watched, proofs, strict=True):
        print(f"{w.name}: {proof.summary()}")
    service, proof = watched[0], proofs[0]
    assert service.final is not None
    met = proof.errors.verdict(service.final.hwm <= TARGET_PEAK_MB and proof.met)
    print(
        f"target peak RSS <= {TARGET_PEAK_MB:.0f} MB ({service.name}, while doing its work): "
        f"{verdict(met)} ({service.final.hwm:.1f} MiB)"
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


def run(server: BenchServer, args: argparse.Namespace) -> bool:
    name = "quick" if args.quick else "reaction"
    spec = SCALES[name]
    sweeps = args.sweeps or (4 if args.quick else 22)
    dbname = ensure_fleet(server, name, spec, reuse=args.reuse)
    clone = f"{dbname}_mem"
    url = server.clone(dbname, clone)
    try:
        bare = idle_import("import sys")
        imported = idle_import("import prebuildd.service")
        # Debug: a quiet sweep's reconciles log at debug, and they are the evidence of work.
        options = [
            "--sweep-interval", "5s", "--metrics-addr", "127.0.0.1:0", "--log-level", "debug",
        ]  # fmt: skip
        watched = [Watched("prebuildd run", ServiceProcess(url, options))]
        for w in watched:
            print(f"{w.name}: {w.service.command(url)}")
            w.service.start()
        codes: list[int | None] = []
        try:
            watch(watched, spec.templates, sweeps)
        finally:
            for w in watched:
                codes.append(w.service.stop())
                print(f"{w.name} stopped (exit code {codes[-1]})")
        proofs = [evidence(w, spec.templates, sweeps) for w in watched]
        for proof, code in zip(proofs, codes, strict=True):
            if code != 0:
                proof.errors.lines.append(f"the service exited with code {code} on SIGTERM")
        met = report(bare, imported, watched, sweeps, proofs)
    finally:
        server.drop(clone)
    print(f"after the run: {load()}")
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    common_args(parser)
    parser.add_argument("--sweeps", type=int, default=0, help="sweeps to watch (default 22)")
    args = parser.parse_args()
    print_header("bench.memory")
    with bench_server() as server:
        print_server(server)
        met = run(server, args)
    raise SystemExit(0 if met else 1)


if __name__ == "__main__":
    main()
