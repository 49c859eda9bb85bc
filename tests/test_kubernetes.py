"""The Kubernetes manifests (``deploy/kubernetes``): schema-valid, and consistent with each
other and with the proxy's own configuration rules.

Schemas come from ``kubernetes-validate`` (bundled JSON schemas, strict: unknown fields
fail), checked against the oldest and the newest Kubernetes it knows; a run inside an
empty network namespace proves it needs no network. The per-pod Services are checked port
by port against the slice ``--instance K/N`` makes the proxy listen on, computed by
ftpsproxy itself from the ConfigMap's TOML.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate.utils as kubernetes_validate
import pytest
import yaml  # kubernetes-validate's own dependency

from ftpsproxy.settings.config import build_config, load_toml
from ftpsproxy.settings.values import PortRange
from tests.support.ci import require, unavailable
from tests.support.clients import require_tool

REPO = Path(__file__).resolve().parent.parent
KUBE = REPO / "deploy" / "kubernetes"
GEN_PORTS = KUBE / "gen_ports.py"
#: The oldest and the newest Kubernetes the bundled schemas cover.
VERSIONS = (kubernetes_validate.all_versions()[0], kubernetes_validate.latest_version())
#: Custom resources: kubernetes-validate has only the built-in kinds' schemas, and the
#: Prometheus Operator's CRD schema is not vendored here (it is not this project's). The
#: ServiceMonitor is checked by test_servicemonitor_scrapes_every_pods_metrics_port instead.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
#: The USER of deploy/container/Containerfile.
IMAGE_UID = 10001


def _documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(KUBE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield path, doc


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [
        doc for _, doc in _documents() if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} manifests"
    return found[0]


def _toml_values(tmp_path: Path) -> dict[str, Any]:
    """The ConfigMap's ftpsproxy.toml, read by the proxy's own reader (unknown keys fail)."""
    path = tmp_path / "ftpsproxy.toml"
    path.write_text(_one("ConfigMap", "ftpsproxy-config")["data"]["ftpsproxy.toml"])
    return load_toml(path)


def _statefulset() -> dict[str, Any]:
    return _one("StatefulSet", "ftpsproxy")


def _container() -> dict[str, Any]:
    containers = _statefulset()["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _env(name: str) -> str:
    values = [env["value"] for env in _container()["env"] if env["name"] == name]
    assert len(values) == 1, f"env {name}"
    value: str = values[0]
    return value


def _port_of(endpoint: str) -> int:
    """The port of a ``tcp:PORT:interface=...`` endpoint string."""
    kind, port, *_ = endpoint.split(":")
    assert kind == "tcp", endpoint
    return int(port)


def _pod_services() -> list[dict[str, Any]]:
    return [
        doc
        for path, doc in _documents()
        if path.name == "services.yaml" and doc["kind"] == "Service"
    ]


def test_the_manifests_are_the_expected_set() -> None:
    """Fails when a manifest goes missing (a validation over fewer files proves less)."""
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for _, doc in _documents())
    replicas = _statefulset()["spec"]["replicas"]
    assert kinds == sorted(
        [
            ("ConfigMap", "ftpsproxy-config"),
            ("PodDisruptionBudget", "ftpsproxy"),
            ("Secret", "ftpsproxy-tls"),
            ("Service", "ftpsproxy"),
            ("ServiceMonitor", "ftpsproxy"),
            ("StatefulSet", "ftpsproxy"),
            *(("Service", f"ftpsproxy-{index}") for index in range(replicas)),
        ]
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_every_built_in_manifest_validates_strictly(version: str) -> None:
    """Fails on a misspelt or misplaced field, a wrong type, a missing required field."""
    checked = 0
    for path, doc in _documents():
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']}: {error.message}")
        checked += 1
    assert checked == len(list(_documents())) - len(CUSTOM_KINDS)


def test_validation_works_without_any_network(tmp_path: Path) -> None:
    """The validator's CLI inside an empty network namespace: passes the manifests and still
    rejects a broken one (so the pass is not a validator that cannot reach its schemas)."""
    unshare = shutil.which("unshare")
    require(unshare is not None and os.geteuid() == 0, "unshare --net needs root and util-linux")
    assert unshare is not None
    files = [
        str(path)
        for path in sorted(KUBE.glob("*.yaml"))
        if not any(doc["kind"] == "ServiceMonitor" for doc in yaml.safe_load_all(path.read_text()))
    ]
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 1, prot: 2}]}\n"
    )

    def offline(*paths: str) -> subprocess.CompletedProcess[str]:
        command = [unshare, "--net", sys.executable, "-m", "kubernetes_validate", "--strict"]
        return subprocess.run(
            [*command, *paths], capture_output=True, text=True, timeout=120, check=False
        )

    good = offline(*files)
    if good.returncode != 0 and "unshare failed" in good.stderr:
        unavailable(f"cannot make a network namespace here: {good.stderr.strip()}")
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.count(" passed for resource ") == len(list(_documents())) - 1
    bad = offline(str(broken))
    assert bad.returncode != 0
    assert "'prot' was unexpected" in bad.stdout + bad.stderr


def test_gen_ports_splits_as_the_proxy_does() -> None:
    """gen_ports.py has its own copy of the split (it must run without ftpsproxy installed):
    fails when the two disagree on any range and count."""
    spec = importlib.util.spec_from_file_location("gen_ports", GEN_PORTS)
    assert spec is not None and spec.loader is not None
    gen_ports = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_ports)
    for low, high in ((30000, 30099), (30000, 30000), (40000, 40006), (1024, 65535)):
        ports = PortRange(low, high)
        for count in {1, 2, 3, 4, 7, ports.size} & set(range(1, ports.size + 1)):
            mine = gen_ports.slices(low, high, count)
            theirs = ports.split(count)
            assert [(r.start, r.stop - 1) for r in mine] == [(s.low, s.high) for s in theirs]


def test_services_yaml_is_generated_from_the_configmap_and_replicas(tmp_path: Path) -> None:
    """Fails when services.yaml was edited by hand, or not regenerated after passive-ports
    or the replica count changed."""
    passive = _toml_values(tmp_path)["passive-ports"]
    replicas = _statefulset()["spec"]["replicas"]
    generated = subprocess.run(
        [sys.executable, str(GEN_PORTS), "--passive-ports", passive, "--replicas", str(replicas)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert (KUBE / "services.yaml").read_text() == generated, (
        "regenerate: python3 deploy/kubernetes/gen_ports.py "
        f"--passive-ports {passive} --replicas {replicas} > deploy/kubernetes/services.yaml"
    )


def test_each_pods_service_forwards_exactly_the_ports_that_pod_listens_on(
    tmp_path: Path,
) -> None:
    """Pod K's Service: the control ports to the pod's listeners, and port for port the
    slice ftpsproxy takes with ``--instance K/N`` (from the ConfigMap, by the proxy's own
    code). Fails when a passive port would go to a pod that does not own it, or nowhere."""
    values = _toml_values(tmp_path)
    replicas = _statefulset()["spec"]["replicas"]
    services = _pod_services()
    assert len(services) == replicas
    control = {
        21: _port_of(values["listen"][0]),
        990: _port_of(values["listen-implicit"][0]),
    }
    every: list[int] = []
    for index, service in enumerate(services):
        pod = f"ftpsproxy-{index}"
        spec = service["spec"]
        assert service["metadata"]["name"] == pod
        assert spec["selector"] == {"statefulset.kubernetes.io/pod-name": pod}
        assert spec["type"] == "LoadBalancer"
        assert spec["externalTrafficPolicy"] == "Local"
        config = build_config(values, {"instance": f"{index}/{replicas}"})
        owned = list(range(config.passive_ports.low, config.passive_ports.high + 1))
        passive = [p for p in spec["ports"] if p["name"].startswith("pasv-")]
        assert [p["port"] for p in passive] == owned
        assert all(p["targetPort"] == p["port"] and p["protocol"] == "TCP" for p in passive)
        published = {p["port"]: p["targetPort"] for p in spec["ports"] if p not in passive}
        assert published == control
        every += owned
    whole = build_config(values, {}).passive_ports
    assert every == list(range(whole.low, whole.high + 1))  # all of it, each port once


def test_statefulset_agrees_with_the_config_the_image_and_the_other_manifests(
    tmp_path: Path,
) -> None:
    """Replica count, grace period, probes, ports, user and selectors, each tied to what
    it must match; fails on any drift between them."""
    values = _toml_values(tmp_path)
    sts = _statefulset()
    pod = sts["spec"]["template"]
    container = _container()
    replicas = sts["spec"]["replicas"]
    assert _env("REPLICAS") == str(replicas)
    # The drain must end before the kubelet's SIGKILL.
    assert pod["spec"]["terminationGracePeriodSeconds"] > values["drain-timeout"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "ftp": _port_of(values["listen"][0]),
        "ftps": _port_of(values["listen-implicit"][0]),
        "metrics": _port_of(values["metrics"]),
    }
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert pod["spec"]["securityContext"]["runAsUser"] == IMAGE_UID
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    # The pod's name comes from the downward API; the ordinal is parsed from it.
    pod_name = [e for e in container["env"] if e["name"] == "POD_NAME"]
    assert pod_name[0]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    labels = pod["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pdb = _one("PodDisruptionBudget", "ftpsproxy")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    headless = _one("Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"].items() <= labels.items()
    # The config's certificate paths exist in the projected volume.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    etc = next(v for v in pod["spec"]["volumes"] if v["name"] == "etc")["projected"]
    files = {
        item["path"]
        for source in etc["sources"]
        for item in source.get("secret", {}).get("items", [])
    }
    for key in ("certificate", "private-key"):
        assert values[key].removeprefix(mounts["etc"] + "/") in files


def test_every_pod_has_a_public_address(tmp_path: Path) -> None:
    """public-addresses: one IPv4 address per pod name, no pod missing, none unknown."""
    replicas = _statefulset()["spec"]["replicas"]
    text = _one("ConfigMap", "ftpsproxy-config")["data"]["public-addresses"]
    entries = dict(line.split() for line in text.splitlines() if line.strip())
    assert sorted(entries) == [f"ftpsproxy-{index}" for index in range(replicas)]
    for address in entries.values():
        ipaddress.IPv4Address(address)
    assert len(set(entries.values())) == replicas


@pytest.mark.parametrize("pod", ["ftpsproxy-0", "ftpsproxy-2"])
def test_the_start_wrapper_passes_the_pods_slice_and_address(pod: str, tmp_path: Path) -> None:
    """The StatefulSet's shell wrapper, run by /bin/sh with a stand-in twistd that prints
    its arguments: fails when the ordinal, the count or the address come out wrong."""
    script = _container()["command"]
    assert script[:2] == ["/bin/sh", "-c"]
    # Kubernetes rewrites $(NAME) in commands itself; the wrapper must not use it.
    assert "$(" not in script[2]
    checked = subprocess.run(
        [require_tool("shellcheck"), "--shell=sh", "-"],
        input=script[2],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stdout
    etc = tmp_path / "etc"
    etc.mkdir()
    config = _one("ConfigMap", "ftpsproxy-config")["data"]
    (etc / "public-addresses").write_text(config["public-addresses"])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "twistd").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    (bin_dir / "twistd").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "POD_NAME": pod, "REPLICAS": _env("REPLICAS")}

    def run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        body = script[2].replace("/etc/ftpsproxy", str(etc))
        return subprocess.run(
            ["/bin/sh", "-c", body], capture_output=True, text=True, env=env, timeout=10
        )

    done = run(env)
    assert done.returncode == 0, done.stderr
    ordinal = pod.rsplit("-", 1)[1]
    address = dict(line.split() for line in config["public-addresses"].splitlines())[pod]
    args = done.stdout.split()
    assert args[:3] == ["--nodaemon", "--pidfile=", "ftpsproxy"]
    assert args[args.index("--instance") + 1] == f"{ordinal}/{_env('REPLICAS')}"
    assert args[args.index("--public-address") + 1] == address
    assert args[args.index("--config") + 1] == f"{etc}/ftpsproxy.toml"
    # A pod without a line stops with a message instead of announcing a wrong address.
    missing = run({**env, "POD_NAME": "ftpsproxy-9"})
    assert missing.returncode == 1
    assert "no line for ftpsproxy-9 in public-addresses" in missing.stderr


def test_servicemonitor_scrapes_every_pods_metrics_port(tmp_path: Path) -> None:
    """No schema for this custom resource (see CUSTOM_KINDS): its fields are checked by
    hand, and its selector and port against the Service and the pod they must match."""
    monitor = _one("ServiceMonitor", "ftpsproxy")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    selected = [
        doc
        for _, doc in _documents()
        if doc["kind"] == "Service"
        and monitor["spec"]["selector"]["matchLabels"].items() <= doc["metadata"]["labels"].items()
    ]
    assert [doc["metadata"]["name"] for doc in selected] == ["ftpsproxy"]  # the headless one
    (endpoint,) = monitor["spec"]["endpoints"]
    assert set(endpoint) <= {"port", "path", "interval"}
    assert endpoint["path"] == "/metrics"
    (port,) = [p for p in selected[0]["spec"]["ports"] if p["name"] == endpoint["port"]]
    container_ports = {p["name"]: p["containerPort"] for p in _container()["ports"]}
    assert container_ports[port["targetPort"]] == _port_of(_toml_values(tmp_path)["metrics"])
