"""The deployment files under deploy/ are wired together: names, ports, credentials, settings.

No Docker engine or cluster is needed. The Dockerfile, deploy/compose.yaml and the Kubernetes
manifests (through deploy/kustomization.yaml) are parsed and cross-checked: every service a
URL names exists, the metrics port is the same in the container, the probes and the Service,
the service runs as the least-privilege role while migrations run as the owner, and every
PREBUILDD_* setting is one the CLI reads and parses. When `kubectl` is installed, the
kustomizations are also built for real (under CI=true a missing kubectl fails the test).

Monitoring: compose's Prometheus scrapes every replica of the service on its metrics port and
loads the rules file, Grafana's provisioning finds the data source and the dashboard, the
example pools' seed runs on a migrated database, and the optional Kubernetes monitoring
kustomization (ServiceMonitor, PrometheusRule) selects the metrics Service with the scrape job
the alert rules expect.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import yaml

from _prometheus import (
    DASHBOARD,
    PROMETHEUS_CONFIG,
    RULES,
    load_dashboard,
    require_tool,
    scrape_job_of_rules,
)
from _psql import run_file
from prebuildd.cli import build_parser, settings_from
from prebuildd.config import parse_duration

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
ROLE_SCRIPT = DEPLOY / "sql" / "prebuildd-role.sql"
MONITORING = DEPLOY / "kubernetes" / "monitoring"
SEED = DEPLOY / "seed" / "example-pools.sql"
KUBECTL_HINT = "install kubectl (its `kustomize` subcommand builds the manifests)"
METRICS_PORT = 2118
ROLE = "prebuildd"

Doc = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _yaml_docs(path: Path) -> list[Doc]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


@pytest.fixture(scope="module")
def compose() -> Doc:
    docs = _yaml_docs(DEPLOY / "compose.yaml")
    assert len(docs) == 1
    return docs[0]


@pytest.fixture(scope="module")
def services(compose: Doc) -> dict[str, Doc]:
    found: dict[str, Doc] = compose["services"]
    return found


@pytest.fixture(scope="module")
def kustomization() -> Doc:
    return _yaml_docs(DEPLOY / "kustomization.yaml")[0]


@pytest.fixture(scope="module")
def k8s(kustomization: Doc) -> dict[tuple[str, str], Doc]:
    """Every resource of the kustomization, by (kind, name)."""
    found: dict[tuple[str, str], Doc] = {}
    for resource in kustomization["resources"]:
        for doc in _yaml_docs(DEPLOY / resource):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = doc
    return found


@pytest.fixture(scope="module")
def deployment(k8s: dict[tuple[str, str], Doc]) -> Doc:
    return k8s[("Deployment", "prebuildd")]


@pytest.fixture(scope="module")
def job(k8s: dict[tuple[str, str], Doc]) -> Doc:
    return k8s[("Job", "prebuildd-migrate")]


def _env(service: Doc) -> dict[str, str]:
    """A compose service's environment as a dict (compose allows a map or KEY=VALUE list)."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        return dict(item.split("=", 1) for item in raw)
    return {key: str(value) for key, value in raw.items()}


def _container_port(mapping: str) -> int:
    """The container side of a compose port mapping: "127.0.0.1:2118-2119:2118" -> 2118."""
    return int(str(mapping).rsplit(":", 1)[-1].split("/")[0])


def _containers(pod_spec: Doc) -> Iterator[Doc]:
    yield from pod_spec.get("initContainers", [])
    yield from pod_spec["containers"]


def _named(items: list[Doc], name: str) -> Doc:
    matches = [item for item in items if item["name"] == name]
    assert len(matches) == 1, f"expected one {name!r}, found {len(matches)}"
    return matches[0]


def _secret_data(k8s: Mapping[tuple[str, str], Doc], name: str) -> dict[str, str]:
    secret = k8s[("Secret", name)]
    return {**secret.get("data", {}), **secret.get("stringData", {})}


# ---------------------------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def test_dockerfile_is_multi_stage_on_a_slim_base() -> None:
    bases = [args.split()[0] for keyword, args in _dockerfile_instructions() if keyword == "FROM"]
    assert len(bases) >= 2, "build the wheel in one stage, run from a clean one"
    assert all("slim" in base for base in bases), bases
    assert bases[-1].startswith("python:3.11"), "the project targets Python 3.11"


def test_dockerfile_runs_as_the_unprivileged_user_it_creates() -> None:
    stage = _final_stage()
    users = [args for keyword, args in stage if keyword == "USER"]
    assert users, "the final stage must switch to a non-root USER"
    uid = users[-1].split(":")[0]
    assert uid not in ("root", "0")
    created = " ".join(args for keyword, args in stage if keyword == "RUN")
    assert f"--uid {uid}" in created, "the USER must be created in the final stage"
    assert uid == "10001", "the Kubernetes securityContext names uid 10001"


def test_dockerfile_entrypoint_and_default_command() -> None:
    stage = dict(_final_stage())
    assert json.loads(stage["ENTRYPOINT"]) == ["prebuildd"]
    cmd = json.loads(stage["CMD"])
    assert cmd[0] == "run" and "--no-migrate" in cmd
    assert str(METRICS_PORT) in stage["EXPOSE"].split()
    assert f"PREBUILDD_METRICS_ADDR=0.0.0.0:{METRICS_PORT}" in stage["ENV"]


def test_dockerfile_copies_only_what_the_context_allows() -> None:
    """The context is the repository root; the allow-list must let every COPY source in."""
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    rules = [line.strip() for line in ignore if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "allow-list: exclude everything, then re-include"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    sources = []
    for keyword, args in _dockerfile_instructions():
        if keyword == "COPY" and not args.startswith("--from"):
            sources.extend(args.split()[:-1])
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert source.rstrip("/") in allowed, f"COPY {source}: excluded by the dockerignore"
    # hatchling reads the readme named in pyproject.toml.
    assert "README.md" in sources


# ---------------------------------------------------------------------------------------------
# compose.yaml
# ---------------------------------------------------------------------------------------------


def test_compose_has_the_expected_services(services: dict[str, Doc]) -> None:
    assert {"postgres", "migrate", "grants", "prebuildd", "provisioner", "jaeger"} <= set(services)
    assert {"prometheus", "grafana", "example-pools"} <= set(services)
    assert services["postgres"]["image"].startswith("postgres:15")
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])


def test_compose_start_order(services: dict[str, Doc]) -> None:
    def condition(service: str, dependency: str) -> str:
        condition: str = services[service]["depends_on"][dependency]["condition"]
        return condition

    assert condition("migrate", "postgres") == "service_healthy"
    assert condition("grants", "migrate") == "service_completed_successfully"
    assert condition("prebuildd", "grants") == "service_completed_successfully"
    assert condition("provisioner", "migrate") == "service_completed_successfully"
    for service in services.values():
        for dependency in service.get("depends_on", {}):
            assert dependency in services


def test_compose_builds_the_image_from_the_repository_root(services: dict[str, Doc]) -> None:
    for name in ("migrate", "prebuildd", "provisioner"):
        build = services[name]["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context == REPO
        assert (context / build["dockerfile"]).is_file()
        assert services[name]["image"] == services["prebuildd"]["image"]


def test_compose_database_urls(services: dict[str, Doc]) -> None:
    """Owner for migrate and the dev tools, the least-privilege role for the service; every
    URL names the postgres service, its port and its database, with matching passwords."""
    pg = _env(services["postgres"])
    role_password = _env(services["grants"])["ROLE_PASSWORD"]
    expected_user = {
        "migrate": pg["POSTGRES_USER"],
        "provisioner": pg["POSTGRES_USER"],
        "demo": pg["POSTGRES_USER"],
        "prebuildd": ROLE,
    }
    seen = set()
    for name, service in services.items():
        url = _env(service).get("PREBUILDD_DATABASE_URL")
        if url is None:
            continue
        seen.add(name)
        parts = urlsplit(url)
        assert parts.scheme == "postgresql"
        assert parts.hostname in services and parts.hostname == "postgres"
        assert parts.port == 5432
        assert parts.path.lstrip("/") == pg["POSTGRES_DB"]
        assert parts.username == expected_user[name], name
        password = role_password if parts.username == ROLE else pg["POSTGRES_PASSWORD"]
        assert parts.password == password, name
    assert {"migrate", "prebuildd", "provisioner"} <= seen


def test_compose_grants_applies_the_role_script_as_owner(services: dict[str, Doc]) -> None:
    grants = services["grants"]
    pg = _env(services["postgres"])
    env = _env(grants)
    assert env["PGHOST"] == "postgres" and env["PGPORT"] == "5432"
    assert (env["PGUSER"], env["PGPASSWORD"]) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"])
    assert env["PGDATABASE"] == pg["POSTGRES_DB"]
    mounts = {}
    for volume in grants["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[target] = (DEPLOY / source).resolve()
    script = " ".join(grants["command"])
    used = re.findall(r"-f\s+(\S+)", script)
    assert used, "grants must run psql -f <role script>"
    for path in used:
        folder, _, filename = path.rpartition("/")
        assert mounts[folder] / filename == ROLE_SCRIPT.resolve()
    assert "ON_ERROR_STOP=1" in script
    assert "ALTER ROLE prebuildd PASSWORD" in script


def test_compose_prebuildd_replicas_and_metrics(services: dict[str, Doc]) -> None:
    svc = services["prebuildd"]
    assert svc["command"] == ["run", "--no-migrate"]
    assert svc["deploy"]["replicas"] == 2
    assert _env(svc)["PREBUILDD_METRICS_ADDR"] == f"0.0.0.0:{METRICS_PORT}"
    assert {_container_port(port) for port in svc["ports"]} == {METRICS_PORT}
    assert "container_name" not in svc, "a fixed container name forbids replicas"


def test_compose_traces_go_to_jaeger(services: dict[str, Doc]) -> None:
    jaeger = services["jaeger"]
    assert jaeger["image"].startswith(("jaegertracing/all-in-one", "jaegertracing/jaeger"))
    assert {_container_port(port) for port in jaeger["ports"]} >= {16686, 4318}
    assert _env(jaeger).get("COLLECTOR_OTLP_ENABLED") == "true"
    exporting = {
        name for name, svc in services.items() if "OTEL_EXPORTER_OTLP_ENDPOINT" in _env(svc)
    }
    assert {"prebuildd", "provisioner"} <= exporting
    for name in exporting:
        env = _env(services[name])
        endpoint = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert (endpoint.scheme, endpoint.hostname, endpoint.port) == ("http", "jaeger", 4318)
        assert env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") == "http/protobuf"
        assert env.get("OTEL_SERVICE_NAME"), f"{name}: name the service in traces"
    assert _env(services["prebuildd"])["OTEL_SERVICE_NAME"] == "prebuildd"


# ---------------------------------------------------------------------------------------------
# Kubernetes
# ---------------------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest(
    kustomization: Doc, k8s: dict[tuple[str, str], Doc]
) -> None:
    listed = {(DEPLOY / r).resolve() for r in kustomization["resources"]}
    on_disk = {p.resolve() for p in (DEPLOY / "kubernetes").glob("*.yaml")}
    assert listed == on_disk
    namespaces = [name for kind, name in k8s if kind == "Namespace"]
    assert namespaces == [kustomization["namespace"]]
    for generator in kustomization["configMapGenerator"]:
        for file in generator["files"]:
            assert (DEPLOY / file.split("=")[-1]).is_file()
    images = {image["name"] for image in kustomization["images"]}
    for kind in ("Deployment", "Job"):
        for (k, _), doc in k8s.items():
            if k != kind:
                continue
            for c in _containers(doc["spec"]["template"]["spec"]):
                name = c["image"].split(":")[0]
                assert name in images or name == "postgres", c["image"]


def test_deployment_replicas_args_and_shutdown(deployment: Doc) -> None:
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 15
    container = _named(pod["containers"], "prebuildd")
    assert container["args"] == ["run", "--no-migrate"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_deployment_probes_use_the_metrics_port(deployment: Doc) -> None:
    pod = deployment["spec"]["template"]["spec"]
    container = _named(pod["containers"], "prebuildd")
    port = _named(container["ports"], "metrics")
    assert port["containerPort"] == METRICS_PORT
    probes = {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in probes.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert get["port"] in ("metrics", METRICS_PORT)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(METRICS_PORT)


def test_deployment_resources(deployment: Doc, job: Doc) -> None:
    for pod in (deployment["spec"]["template"]["spec"], job["spec"]["template"]["spec"]):
        for container in _containers(pod):
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
            assert "memory" in resources["limits"], container["name"]
    main = _named(deployment["spec"]["template"]["spec"]["containers"], "prebuildd")
    assert main["resources"]["requests"] == {"cpu": "50m", "memory": "128Mi"}


def test_pods_are_locked_down(deployment: Doc, job: Doc) -> None:
    """What the "restricted" Pod Security Standard asks for, plus a read-only root."""
    for pod in (deployment["spec"]["template"]["spec"], job["spec"]["template"]["spec"]):
        assert pod["automountServiceAccountToken"] is False
        pod_sc = pod.get("securityContext", {})
        assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
        for container in _containers(pod):
            sc = {**pod_sc, **container.get("securityContext", {})}
            assert sc["runAsNonRoot"] is True, container["name"]
            assert sc.get("runAsUser", 1) != 0, container["name"]
            assert sc["allowPrivilegeEscalation"] is False, container["name"]
            assert sc["readOnlyRootFilesystem"] is True, container["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], container["name"]
    pod_sc = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod_sc["runAsUser"] == 10001, "the uid the Dockerfile creates"


def test_service_targets_the_metrics_port(k8s: dict[tuple[str, str], Doc], deployment: Doc) -> None:
    service = k8s[("Service", "prebuildd-metrics")]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    port = _named(service["spec"]["ports"], "metrics")
    assert port["port"] == METRICS_PORT
    container = _named(deployment["spec"]["template"]["spec"]["containers"], "prebuildd")
    target = port["targetPort"]
    resolved = (
        _named(container["ports"], target)["containerPort"] if isinstance(target, str) else target
    )
    assert resolved == METRICS_PORT
    pdb = k8s[("PodDisruptionBudget", "prebuildd")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_referenced_configmaps_and_secrets_exist(
    k8s: dict[tuple[str, str], Doc], kustomization: Doc, deployment: Doc, job: Doc
) -> None:
    generated = {g["name"] for g in kustomization["configMapGenerator"]}
    configmaps = {name for kind, name in k8s if kind == "ConfigMap"} | generated
    secrets = {name for kind, name in k8s if kind == "Secret"}
    for pod in (deployment["spec"]["template"]["spec"], job["spec"]["template"]["spec"]):
        for container in _containers(pod):
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in _secret_data(k8s, ref["name"]), var["name"]
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps


def _secret_names_used(pod: Doc) -> set[str]:
    names = set()
    for container in _containers(pod):
        names |= {s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s}
        for var in container.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                names.add(ref["name"])
    return names


def test_service_runs_as_the_role_and_migrations_as_the_owner(
    k8s: dict[tuple[str, str], Doc], deployment: Doc, job: Doc
) -> None:
    pod = deployment["spec"]["template"]["spec"]
    assert _secret_names_used(pod) == {"prebuildd-db"}, "the owner's secret stays out of the pods"
    role_url = urlsplit(_secret_data(k8s, "prebuildd-db")["PREBUILDD_DATABASE_URL"])
    owner = _secret_data(k8s, "prebuildd-db-owner")
    owner_url = urlsplit(owner["PREBUILDD_DATABASE_URL"])
    assert role_url.username == ROLE and owner_url.username != ROLE
    assert (role_url.hostname, role_url.port, role_url.path) == (
        owner_url.hostname,
        owner_url.port,
        owner_url.path,
    ), "both URLs must name the same database"
    assert role_url.password == owner["ROLE_PASSWORD"]

    job_pod = job["spec"]["template"]["spec"]
    assert _secret_names_used(job_pod) == {"prebuildd-db-owner"}
    migrate = _named(job_pod["initContainers"], "migrate")
    assert migrate["args"] == ["migrate"]
    grants = _named(job_pod["containers"], "grants")
    script = " ".join(grants["args"])
    mount = _named(grants["volumeMounts"], "role-sql")["mountPath"]
    assert f"-f {mount}/{ROLE_SCRIPT.name}" in script
    assert "ON_ERROR_STOP=1" in script
    volume = _named(job_pod["volumes"], "role-sql")
    assert volume["configMap"]["name"] == "prebuildd-role-sql"

    # The pods wait for the Job with a read-only command that needs the schema and grants.
    assert _named(pod["initContainers"], "wait-for-grants")["args"] == ["status"]


def test_configmap_metrics_addr_matches_the_container_port(k8s: dict[tuple[str, str], Doc]) -> None:
    data = k8s[("ConfigMap", "prebuildd-config")]["data"]
    host, _, port = data["PREBUILDD_METRICS_ADDR"].rpartition(":")
    assert (host, int(port)) == ("0.0.0.0", METRICS_PORT)
    assert urlsplit(data["OTEL_EXPORTER_OTLP_ENDPOINT"]).port == 4318


def test_kustomization_builds() -> None:
    kubectl = require_tool("kubectl", KUBECTL_HINT)
    out = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    docs = [doc for doc in yaml.safe_load_all(out) if doc]
    by_kind = {(d["kind"], d["metadata"]["name"]) for d in docs}
    generated = [name for kind, name in by_kind if name.startswith("prebuildd-role-sql-")]
    assert len(generated) == 1, "the role script becomes one hashed ConfigMap"
    job = next(d for d in docs if d["kind"] == "Job")
    volume = _named(job["spec"]["template"]["spec"]["volumes"], "role-sql")
    assert volume["configMap"]["name"] == generated[0]
    role_sql = next(d for d in docs if d["metadata"]["name"] == generated[0])
    assert role_sql["data"][ROLE_SCRIPT.name] == ROLE_SCRIPT.read_text(encoding="utf-8")
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "prebuildd", doc["metadata"]["name"]


# ---------------------------------------------------------------------------------------------
# Monitoring: Prometheus, Grafana and the example pools (compose); ServiceMonitor, PrometheusRule
# ---------------------------------------------------------------------------------------------


def _bind_mounts(service: Doc) -> dict[str, Path]:
    """A compose service's bind mounts of files under deploy/: container path -> host path."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if source.startswith("."):
            mounts[target] = (DEPLOY / source).resolve()
    return mounts


def _host_path(service: Doc, container_path: str) -> Path:
    """Where a path inside a service's container comes from on the host (via its mounts)."""
    for target, source in sorted(_bind_mounts(service).items(), key=lambda m: -len(m[0])):
        if container_path == target:
            return source
        if container_path.startswith(target.rstrip("/") + "/"):
            return source / container_path[len(target.rstrip("/")) + 1 :]
    raise AssertionError(f"{container_path} is not mounted from deploy/")


def _metrics_port(service: Doc) -> int:
    return int(_env(service)["PREBUILDD_METRICS_ADDR"].rpartition(":")[2])


def _flag(args: list[str], name: str) -> str:
    values = [arg.split("=", 1)[1] for arg in args if arg.startswith(f"{name}=")]
    assert len(values) == 1, f"{name} given {len(values)} times"
    return values[0]


@pytest.fixture(scope="module")
def prometheus_config(services: dict[str, Doc]) -> Doc:
    prometheus = services["prometheus"]
    path = _host_path(prometheus, _flag(prometheus["command"], "--config.file"))
    assert path == PROMETHEUS_CONFIG.resolve()
    config: Doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return config


def test_compose_prometheus_scrapes_every_replica(
    services: dict[str, Doc], prometheus_config: Doc
) -> None:
    jobs = {job["job_name"]: job for job in prometheus_config["scrape_configs"]}
    job = jobs[scrape_job_of_rules()]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    # A static `service:port` target would reach one replica at random: discover them all.
    assert "static_configs" not in job
    discovered = [name for sd in job["dns_sd_configs"] for name in sd["names"]]
    assert "prebuildd" in discovered
    for sd in job["dns_sd_configs"]:
        assert sd.get("type", "SRV") == "A", "compose's DNS serves A records"
        for name in sd["names"]:
            service = services[name]
            assert sd["port"] == _metrics_port(service) == METRICS_PORT, name
            assert _container_port(service["ports"][0]) == sd["port"]
    assert services["prebuildd"]["deploy"]["replicas"] >= 2
    assert services["prometheus"]["depends_on"]["prebuildd"]["condition"] == "service_started"


def test_compose_prometheus_loads_the_rules_file(
    compose: Doc, services: dict[str, Doc], prometheus_config: Doc
) -> None:
    prometheus = services["prometheus"]
    loaded = [_host_path(prometheus, path) for path in prometheus_config["rule_files"]]
    assert loaded == [RULES.resolve()]
    storage = _flag(prometheus["command"], "--storage.tsdb.path")
    sources = {str(v).split(":")[1]: str(v).split(":")[0] for v in prometheus["volumes"]}
    assert sources[storage] in compose["volumes"], "keep the TSDB on a named volume"
    assert 9090 in {_container_port(port) for port in prometheus["ports"]}


def test_compose_grafana_is_provisioned_with_prometheus_and_the_dashboard(
    services: dict[str, Doc], prometheus_config: Doc
) -> None:
    grafana = services["grafana"]
    provisioning = _host_path(grafana, "/etc/grafana/provisioning")
    sources = [
        source
        for path in sorted((provisioning / "datasources").glob("*.yaml"))
        for source in yaml.safe_load(path.read_text(encoding="utf-8"))["datasources"]
    ]
    assert len(sources) == 1
    source = sources[0]
    url = urlsplit(source["url"])
    assert url.hostname == "prometheus" and url.hostname in services
    assert url.port in {_container_port(port) for port in services["prometheus"]["ports"]}
    assert source["type"] == load_dashboard()["templating"]["list"][0]["query"] == "prometheus"
    assert source["isDefault"] is True
    # $__rate_interval builds on the scrape interval.
    assert source["jsonData"]["timeInterval"] == prometheus_config["global"]["scrape_interval"]

    providers = [
        provider
        for path in sorted((provisioning / "dashboards").glob("*.yaml"))
        for provider in yaml.safe_load(path.read_text(encoding="utf-8"))["providers"]
    ]
    assert len(providers) == 1 and providers[0]["type"] == "file"
    folder = _host_path(grafana, providers[0]["options"]["path"])
    assert DASHBOARD.resolve() in {p.resolve() for p in folder.glob("*.json")}
    home = _env(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert _host_path(grafana, home) == DASHBOARD.resolve()
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_started"


def test_compose_grafana_matches_the_dashboard_sdk_flavour(services: dict[str, Doc]) -> None:
    """The dashboard is built for one Grafana version (the SDK's flavour): run that one."""
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    sdk = re.search(r'"grafana-foundation-sdk==\d+!(\d+\.\d+)\.\d+"', pyproject)
    assert sdk, "pin the SDK as <epoch>!<grafana version>"
    image, _, tag = services["grafana"]["image"].partition(":")
    assert image in ("grafana/grafana", "grafana/grafana-oss")
    assert tag.startswith(sdk.group(1) + "."), (tag, sdk.group(1))


def test_compose_example_pools_seed_runs_as_the_owner_after_migrate(
    services: dict[str, Doc],
) -> None:
    seed = services["example-pools"]
    pg = _env(services["postgres"])
    env = _env(seed)
    assert (env["PGHOST"], env["PGPORT"]) == ("postgres", "5432")
    assert (env["PGUSER"], env["PGPASSWORD"]) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"])
    assert env["PGDATABASE"] == pg["POSTGRES_DB"]
    command = seed["command"]
    assert command[0] == "psql" and "ON_ERROR_STOP=1" in command
    assert _host_path(seed, command[command.index("-f") + 1]) == SEED.resolve()
    assert seed["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert seed["restart"] == "no"


def test_compose_example_pools_seed_finds_the_files_it_includes(
    services: dict[str, Doc],
) -> None:
    """The seed includes the builder of Coder rows with `\\ir` (a path relative to itself):
    that path leads to the same file in the repository and in the one-shot's container."""
    seed = services["example-pools"]
    command = seed["command"]
    inside = posixpath.dirname(command[command.index("-f") + 1])
    text = SEED.read_text(encoding="utf-8")
    includes = re.findall(r"^\\ir\s+(\S+)\s*$", text, re.MULTILINE)
    assert includes, "the seed includes the builder of Coder rows"
    for include in includes:
        in_repo = (SEED.parent / include).resolve()
        assert in_repo.is_file(), include
        assert _host_path(seed, posixpath.normpath(posixpath.join(inside, include))) == in_repo


def test_example_pools_seed_is_idempotent_on_a_migrated_database(db_url: str) -> None:
    counts = """
        SELECT (SELECT count(*) FROM templates),
               (SELECT count(*) FROM template_version_presets WHERE desired_instances > 0),
               (SELECT count(*) FROM template_version_preset_parameters),
               (SELECT count(*) FROM provisioner_jobs)
    """
    # With psql, as compose runs it (the seed includes the builder of Coder rows with \ir).
    with psycopg.connect(db_url, autocommit=True) as conn:
        run_file(db_url, SEED)
        first = conn.execute(counts).fetchone()
        run_file(db_url, SEED)
        second = conn.execute(counts).fetchone()
        active = conn.execute(
            "SELECT count(*) FROM template_version_presets p"
            " JOIN templates t ON t.active_version_id = p.template_version_id"
        ).fetchone()
    assert first == (2, 3, 3, 2), "two templates, three presets, their import jobs"
    assert second == first, "a second run adds nothing"
    assert active == (3,), "every example preset belongs to its template's active version"


@pytest.fixture(scope="module")
def monitoring() -> dict[tuple[str, str], Doc]:
    kustomization = _yaml_docs(MONITORING / "kustomization.yaml")[0]
    listed = {(MONITORING / r).resolve() for r in kustomization["resources"]}
    on_disk = {p.resolve() for p in MONITORING.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert listed == on_disk
    found = {}
    for resource in kustomization["resources"]:
        for doc in _yaml_docs(MONITORING / resource):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def test_monitoring_is_optional_and_in_the_same_namespace(
    kustomization: Doc, k8s: dict[tuple[str, str], Doc], monitoring: dict[tuple[str, str], Doc]
) -> None:
    # The main kustomization must apply on a cluster without the Prometheus Operator's CRDs.
    assert not [key for key, doc in k8s.items() if "monitoring.coreos.com" in doc["apiVersion"]]
    assert set(monitoring) == {("ServiceMonitor", "prebuildd"), ("PrometheusRule", "prebuildd")}
    assert (
        _yaml_docs(MONITORING / "kustomization.yaml")[0]["namespace"] == kustomization["namespace"]
    )


def test_servicemonitor_scrapes_the_metrics_service_as_the_rules_job(
    k8s: dict[tuple[str, str], Doc], monitoring: dict[tuple[str, str], Doc], deployment: Doc
) -> None:
    service = k8s[("Service", "prebuildd-metrics")]
    spec = monitoring[("ServiceMonitor", "prebuildd")]["spec"]
    labels = service["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    # The job label comes from the Service's label named by jobLabel.
    assert labels[spec["jobLabel"]] == scrape_job_of_rules()
    [endpoint] = spec["endpoints"]
    assert endpoint["port"] == _named(service["spec"]["ports"], "metrics")["name"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert endpoint["path"] == annotations["prometheus.io/path"] == "/metrics"


def test_monitoring_kustomization_builds() -> None:
    kubectl = require_tool("kubectl", KUBECTL_HINT)
    out = subprocess.run(
        [kubectl, "kustomize", str(MONITORING)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    docs = [doc for doc in yaml.safe_load_all(out) if doc]
    assert {d["kind"] for d in docs} == {"ServiceMonitor", "PrometheusRule"}
    for doc in docs:
        assert doc["metadata"]["namespace"] == "prebuildd"
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# Settings: every PREBUILDD_* variable is one the CLI reads, with a value it parses
# ---------------------------------------------------------------------------------------------


def _cli_env_names() -> set[str]:
    """Every variable the CLI documents on a flag ("env PREBUILDD_X" in its help)."""
    import argparse

    from prebuildd.cli import build_parser

    names: set[str] = set()
    commands = build_parser()._subparsers
    assert commands is not None
    for action in commands._group_actions:
        assert isinstance(action, argparse._SubParsersAction)
        for sub in action.choices.values():
            for flag in sub._actions:
                names |= set(re.findall(r"env (PREBUILDD_[A-Z_]+)", flag.help or ""))
    return names


def _deploy_env_names(services: dict[str, Doc], k8s: dict[tuple[str, str], Doc]) -> set[str]:
    names: set[str] = set()
    for service in services.values():
        names |= set(_env(service))
    for (kind, name), doc in k8s.items():
        if kind == "ConfigMap":
            names |= set(doc["data"])
        elif kind == "Secret":
            names |= set(_secret_data(k8s, name))
        elif kind in ("Deployment", "Job"):
            for container in _containers(doc["spec"]["template"]["spec"]):
                names |= {var["name"] for var in container.get("env", [])}
    for keyword, args in _dockerfile_instructions():
        if keyword == "ENV":
            names |= {item.split("=")[0] for item in args.split()}
    return names


def test_every_prebuildd_variable_is_known_to_the_cli(
    services: dict[str, Doc], k8s: dict[tuple[str, str], Doc]
) -> None:
    known = _cli_env_names()
    assert "PREBUILDD_DATABASE_URL" in known and "PREBUILDD_METRICS_ADDR" in known
    used = {name for name in _deploy_env_names(services, k8s) if name.startswith("PREBUILDD_")}
    assert used, "the deploy files set no PREBUILDD_* variable?"
    assert used <= known, f"unknown to prebuildd (silently ignored): {sorted(used - known)}"


def _run_settings(monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]) -> Any:
    for name in [n for n in os.environ if n.startswith("PREBUILDD_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = build_parser().parse_args(["run", "--no-migrate"])
    assert args.no_migrate
    return settings_from(args)


def test_kubernetes_settings_parse_with_the_real_cli(
    monkeypatch: pytest.MonkeyPatch, k8s: dict[tuple[str, str], Doc]
) -> None:
    data = k8s[("ConfigMap", "prebuildd-config")]["data"]
    env = {**data, **_secret_data(k8s, "prebuildd-db")}
    settings = _run_settings(monkeypatch, env)
    assert settings.database_url == env["PREBUILDD_DATABASE_URL"]
    assert settings.metrics_addr == f"0.0.0.0:{METRICS_PORT}"
    assert settings.sweep_interval == parse_duration(data["PREBUILDD_SWEEP_INTERVAL"])
    assert settings.settle == parse_duration(data["PREBUILDD_SETTLE"])
    assert settings.pool_max_size == int(data["PREBUILDD_POOL_SIZE"])
    assert settings.plan.failure_hard_limit == int(data["PREBUILDD_FAILURE_HARD_LIMIT"])
    assert settings.plan.backoff_interval == parse_duration(data["PREBUILDD_BACKOFF_INTERVAL"])
    assert settings.plan.backoff_lookback == parse_duration(data["PREBUILDD_BACKOFF_LOOKBACK"])
    assert (settings.log_format, settings.log_level) == ("json", data["PREBUILDD_LOG_LEVEL"])


def test_compose_settings_parse_with_the_real_cli(
    monkeypatch: pytest.MonkeyPatch, services: dict[str, Doc]
) -> None:
    env = _env(services["prebuildd"])
    settings = _run_settings(monkeypatch, env)
    assert settings.database_url == env["PREBUILDD_DATABASE_URL"]
    assert settings.metrics_addr == f"0.0.0.0:{METRICS_PORT}"
    assert settings.sweep_interval == parse_duration(env["PREBUILDD_SWEEP_INTERVAL"])
    assert settings.plan.failure_hard_limit == int(env["PREBUILDD_FAILURE_HARD_LIMIT"])
