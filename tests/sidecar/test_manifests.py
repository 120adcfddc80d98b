"""deploy/kubernetes and the Dockerfile name the command, ports and probe paths
that the code actually has."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.routing import Route

from factbus.cli import build_parser
from factbus.config import Settings
from factbus.sidecar.config import SidecarConfig, parse_config
from factbus.sidecar.server import build_app, split_listen
from factbus.sidecar.service import Sidecar

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"


def _documents() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(KUBE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[f"{doc['kind']}/{doc['metadata']['name']}" if "metadata" in doc else path.name] = (
                doc
            )
    return docs


@pytest.fixture(scope="module")
def docs() -> dict[str, dict[str, Any]]:
    return _documents()


def _sidecar_container(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    spec = docs["Deployment/shop"]["spec"]["template"]["spec"]
    (container,) = [c for c in spec["initContainers"] if c["name"] == "factbus"]
    return container


def _dockerfile() -> dict[str, Any]:
    text = (ROOT / "Dockerfile").read_text()
    out: dict[str, Any] = {}
    for key in ("ENTRYPOINT", "CMD"):
        match = re.search(rf"^{key} (\[.*\])$", text, re.MULTILINE)
        assert match, f"Dockerfile has no exec-form {key}"
        out[key] = yaml.safe_load(match.group(1))
    out["EXPOSE"] = [int(p) for p in re.findall(r"^EXPOSE (\d+)$", text, re.MULTILINE)]
    return out


def test_native_sidecar_runs_the_sidecar_command(docs: dict[str, dict[str, Any]]) -> None:
    container = _sidecar_container(docs)
    assert container["restartPolicy"] == "Always"  # a native sidecar
    docker = _dockerfile()
    assert docker["ENTRYPOINT"] == ["factbus"]
    for argv in (container["args"], docker["CMD"]):
        args = build_parser().parse_args(argv)
        assert args.command == "sidecar"
        assert args.action is None
        assert args.config == "/etc/factbus/sidecar.toml"
    mount = container["volumeMounts"][0]
    assert Path(args.config).parent == Path(mount["mountPath"])
    volumes = docs["Deployment/shop"]["spec"]["template"]["spec"]["volumes"]
    (volume,) = [v for v in volumes if v["name"] == mount["name"]]
    configmap = docs[f"ConfigMap/{volume['configMap']['name']}"]
    assert Path(args.config).name in configmap["data"]


def _routes(config: SidecarConfig, tmp_path: Path) -> dict[str, set[str]]:
    """The HTTP methods of each route of the sidecar app ``config`` describes."""
    sidecar = Sidecar(
        config,
        settings=Settings(transport="memory://manifests", store=f"sqlite:///{tmp_path / 'app.db'}"),
    )
    return {
        route.path: route.methods or set()
        for route in build_app(sidecar).routes
        if isinstance(route, Route)
    }


def test_ports_and_probes_are_the_servers(docs: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    container = _sidecar_container(docs)
    toml = tomllib.loads(docs["ConfigMap/shop-factbus"]["data"]["sidecar.toml"])
    config = parse_config(toml)
    _, port = split_listen(config.listen)
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port in named.values()
    assert port in _dockerfile()["EXPOSE"]
    routes = _routes(config, tmp_path)
    probes = {
        kind: container[kind]["httpGet"]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert probes["startupProbe"]["path"] == probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert "GET" in routes[probe["path"]]
        assert named.get(probe["port"], probe["port"]) == port


def test_credentials_come_from_secrets(docs: dict[str, dict[str, Any]]) -> None:
    container = _sidecar_container(docs)
    env = {e["name"]: e for e in container["env"]}
    secret = docs["Secret/shop-factbus"]
    settings = {f"FACTBUS_{name.upper()}" for name in Settings.__dataclass_fields__}
    for name in ("FACTBUS_TRANSPORT", "FACTBUS_STORE"):
        assert name in settings
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]
    assert set(env) <= settings  # every variable is a setting the code reads
    toml = docs["ConfigMap/shop-factbus"]["data"]["sidecar.toml"]
    assert "transport" not in tomllib.loads(toml)["factbus"]  # no credentials in the ConfigMap


def test_prometheus_annotations_point_at_the_metrics_route(
    docs: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    annotations = docs["Deployment/shop"]["spec"]["template"]["metadata"]["annotations"]
    toml = tomllib.loads(docs["ConfigMap/shop-factbus"]["data"]["sidecar.toml"])
    config = parse_config(toml)
    _, port = split_listen(config.listen)
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    routes = _routes(config, tmp_path)
    assert "GET" in routes[annotations["prometheus.io/path"]]
    extras = re.search(r"pip install .*'\.\[([a-z,]+)\]'", (ROOT / "Dockerfile").read_text())
    assert extras is not None
    assert "metrics" in extras.group(1).split(",")  # else /metrics answers 501


def test_the_api_port_is_closed_to_other_pods(docs: dict[str, dict[str, Any]]) -> None:
    policy = docs["NetworkPolicy/shop-factbus-api"]
    pod = docs["Deployment/shop"]["spec"]["template"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    sidecar_ports = {p["name"] for p in _sidecar_container(docs)["ports"]} | {
        p["containerPort"] for p in _sidecar_container(docs)["ports"]
    }
    app_ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    assert allowed and allowed <= app_ports
    assert not allowed & sidecar_ports
    assert not [d for d in docs.values() if d.get("kind") == "Service"]  # nothing exposes it
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    assert "networkpolicy.yaml" in kustomization["resources"]
