"""Offline checks of the deployment files: Kubernetes manifests, compose, Dockerfile, monitoring.

The Kubernetes manifests are validated against the OpenAPI-derived JSON schemas that the
`kubernetes-validate` wheel ships (no cluster, no network), the compose file against the
compose-spec schema vendored by `check-jsonschema`. Kustomize overlays are rendered by a small
strategic-merge renderer below (enough for these files), and by `kubectl kustomize` as well
where kubectl is installed.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import REPO_ROOT as ROOT

K8S = ROOT / "deploy" / "k8s"
KUSTOMIZATIONS = ["base", "gpu"]
# Oldest Kubernetes minor these manifests promise to work on, and the newest schema shipped.
K8S_VERSIONS = ["1.29.0", "1.37.0"]
DEFAULT_DRAIN_TIMEOUT_S = 20
METRIC_NAMES = {
    "dfd_http_requests_total",
    "dfd_http_request_duration_seconds",
    "dfd_http_requests_in_flight",
    "dfd_model_inference_seconds",
    "dfd_batch_size",
    "dfd_queue_wait_seconds",
    "dfd_queue_depth",
    "dfd_predictions_total",
    "dfd_fake_probability",
    "dfd_model_info",
    "dfd_preprocess_seconds",
}

Manifest = dict[str, Any]


# ------------------------------------------------------------------ kustomize rendering ---
def _load_docs(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _merge(base: Any, patch: Any) -> Any:
    """Strategic-merge subset: dicts merge, lists of named dicts merge by name, else replace."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(item, dict) and "name" in item for item in base + patch)
    ):
        by_name = {item["name"]: item for item in base}
        merged_list = [
            _merge(by_name[item["name"]], item) if item["name"] in by_name else item
            for item in patch
        ]
        patched = {item["name"] for item in patch}
        return [item for item in base if item["name"] not in patched] + merged_list
    return copy.deepcopy(patch)


def _containers(doc: Manifest) -> list[Manifest]:
    if doc["kind"] != "Deployment":
        return []
    spec = doc["spec"]["template"]["spec"]
    return list(spec.get("containers", [])) + list(spec.get("initContainers", []))


def render(directory: Path) -> list[Manifest]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[Manifest] = []
    for resource in kustomization.get("resources", []):
        target = directory / resource
        docs.extend(render(target) if target.is_dir() else _load_docs(target))
    for entry in kustomization.get("patches", []):
        for patch in _load_docs(directory / entry["path"]):
            matches = [
                i
                for i, doc in enumerate(docs)
                if doc["kind"] == patch["kind"]
                and doc["metadata"]["name"] == patch["metadata"]["name"]
            ]
            assert matches, f"patch {entry['path']} matches no resource"
            for i in matches:
                docs[i] = _merge(docs[i], patch)
    for image in kustomization.get("images", []):
        for doc in docs:
            for container in _containers(doc):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    for label_set in kustomization.get("labels", []):
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(label_set["pairs"])
            if label_set.get("includeSelectors") and doc["kind"] == "Deployment":
                doc["spec"]["selector"]["matchLabels"].update(label_set["pairs"])
                doc["spec"]["template"]["metadata"]["labels"].update(label_set["pairs"])
    return docs


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[Manifest]]:
    return request.param, render(K8S / request.param)


def one(docs: list[Manifest], kind: str) -> Manifest:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def api_container(docs: list[Manifest]) -> Manifest:
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def config_data(docs: list[Manifest]) -> dict[str, str]:
    return one(docs, "ConfigMap")["data"]


# --------------------------------------------------------------------------- kubernetes ---
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_match_kubernetes_schemas(
    rendered: tuple[str, list[Manifest]], version: str
) -> None:
    import kubernetes_validate

    _, docs = rendered
    for doc in docs + _load_docs(K8S / "base" / "secret.example.yaml"):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(
                f"{doc['kind']}/{doc['metadata']['name']} invalid for {version}: {error.message}"
            )


def test_expected_resources_present(rendered: tuple[str, list[Manifest]]) -> None:
    _, docs = rendered
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "Ingress",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
            "Service",
        ]
    )
    assert all("namespace" not in doc["metadata"] for doc in docs), "base must stay namespace-less"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kubectl_kustomize_renders_the_same_objects(name: str) -> None:
    import kubernetes_validate

    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / name)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    docs = [doc for doc in yaml.safe_load_all(out) if doc]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)
    ours = {(d["kind"], d["metadata"]["name"]) for d in render(K8S / name)}
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} == ours
    assert api_container(docs)["image"] == api_container(render(K8S / name))["image"]


def test_probes_point_at_health_and_ready(rendered: tuple[str, list[Manifest]]) -> None:
    _, docs = rendered
    container = api_container(docs)
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["startupProbe"]["httpGet"]["path"] in {"/health", "/ready"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60, "model load needs time"
    port_names = {port["name"]: port["containerPort"] for port in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in port_names
    assert port_names["http"] == int(config_data(docs)["DFD_PORT"])


def _prestop_seconds(container: Manifest) -> float:
    pre_stop = container["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = " ".join(pre_stop["exec"]["command"])
    match = re.search(r"sleep[ (]+(\d+(?:\.\d+)?)", command)
    assert match, f"cannot read the preStop sleep from {command!r}"
    return float(match.group(1))


def test_grace_period_covers_prestop_and_drain(rendered: tuple[str, list[Manifest]]) -> None:
    _, docs = rendered
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    drain = float(config_data(docs).get("DFD_DRAIN_TIMEOUT_S", DEFAULT_DRAIN_TIMEOUT_S))
    pre_stop = _prestop_seconds(api_container(docs))
    assert pre_stop > 0
    assert pod["terminationGracePeriodSeconds"] > drain + pre_stop


def test_pod_runs_non_root_with_read_only_root(rendered: tuple[str, list[Manifest]]) -> None:
    _, docs = rendered
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = api_container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    checkpoints = mounts["/app/checkpoints"]
    assert checkpoints["readOnly"] is True
    # A model repository, as in the images; with DFD_CHECKPOINT_PATH too, start-up is refused.
    assert config_data(docs)["DFD_MODEL_REPOSITORY"] == "/app/checkpoints"
    assert "DFD_CHECKPOINT_PATH" not in config_data(docs)
    claim = volumes[checkpoints["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim in {
        doc["metadata"]["name"] for doc in docs if doc["kind"] == "PersistentVolumeClaim"
    }


def test_resources_and_threads_agree(rendered: tuple[str, list[Manifest]]) -> None:
    _, docs = rendered
    container = api_container(docs)
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert {"cpu", "memory"} <= requests.keys() and {"cpu", "memory"} <= limits.keys()
    data = config_data(docs)
    assert data["DFD_WORKERS"] == "1"
    assert int(data["DFD_TORCH_THREADS"]) <= int(requests["cpu"])


def test_selectors_connect_service_pdb_hpa_ingress(rendered: tuple[str, list[Manifest]]) -> None:
    _, docs = rendered
    deployment = one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        spec = one(docs, kind)["spec"]
        selector = spec["selector"] if kind == "Service" else spec["selector"]["matchLabels"]
        assert selector.items() <= pod_labels.items(), f"{kind} selects no api pod"
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert hpa["minReplicas"] <= hpa["maxReplicas"]
    pdb = one(docs, "PodDisruptionBudget")["spec"]
    assert (
        pdb["minAvailable"] < max(hpa["minReplicas"], deployment["spec"]["replicas"])
        or hpa["minReplicas"] == 1
    )
    service = one(docs, "Service")
    ingress = one(docs, "Ingress")["spec"]
    backend = ingress["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {port["name"] for port in service["spec"]["ports"]}
    assert ingress["tls"][0]["secretName"]
    assert ingress["tls"][0]["hosts"] == [ingress["rules"][0]["host"]]


def _prefix_matches(prefix: str, path: str) -> bool:
    """Kubernetes ``pathType: Prefix``: element-wise, so /infer matches /infer/x, not /inferx."""
    want = [part for part in prefix.split("/") if part]
    have = [part for part in path.split("/") if part]
    return have[: len(want)] == want


def test_ingress_exposes_only_the_api(rendered: tuple[str, list[Manifest]]) -> None:
    _, docs = rendered
    paths = [
        path for rule in one(docs, "Ingress")["spec"]["rules"] for path in rule["http"]["paths"]
    ]
    assert paths
    for path in paths:
        assert path["pathType"] in {"Prefix", "Exact"}, path
    prefixes = [p["path"] for p in paths if p["pathType"] == "Prefix"]
    exact = {p["path"] for p in paths if p["pathType"] == "Exact"}

    def exposed(url: str) -> bool:
        return url in exact or any(_prefix_matches(prefix, url) for prefix in prefixes)

    assert exposed("/infer") and exposed("/infer/batch")
    for internal in (
        "/",
        "/docs",
        "/docs/assets/swagger-ui.css",
        "/redoc",
        "/openapi.json",
        "/metrics",
        "/health",
        "/ready",
        "/inferx",
    ):
        assert not exposed(internal), f"{internal} is reachable through the Ingress"
    # what is not exposed is still scraped: Prometheus finds the pods by their annotations
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"


def test_settings_come_from_configmap_and_secret(rendered: tuple[str, list[Manifest]]) -> None:
    _, docs = rendered
    data = config_data(docs)
    assert all(key.startswith("DFD_") for key in data)
    assert data["DFD_ENV"] == "production"
    assert not {"DFD_API_KEYS", "MODEL_API_KEY"} & data.keys(), "keys belong in the Secret"
    sources = api_container(docs)["envFrom"]
    assert {"configMapRef", "secretRef"} <= {key for source in sources for key in source}


def test_secret_example_is_a_marked_placeholder_kept_out_of_kustomize() -> None:
    (secret,) = _load_docs(K8S / "base" / "secret.example.yaml")
    assert secret["kind"] == "Secret"
    assert "REPLACE-ME" in secret["stringData"]["DFD_API_KEYS"]
    assert "data" not in secret
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    assert "secret.example.yaml" not in base["resources"], "apply -k would overwrite the real keys"
    deployment = one(render(K8S / "base"), "Deployment")
    secret_refs = [
        source["secretRef"]["name"]
        for source in deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        if "secretRef" in source
    ]
    assert secret_refs == [secret["metadata"]["name"]]


def test_gpu_variant_requests_a_gpu_and_cuda() -> None:
    docs = render(K8S / "gpu")
    container = api_container(docs)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert config_data(docs)["DFD_DEVICE"] == "cuda"
    assert "cu" in container["image"].rsplit(":", 1)[1]
    base = render(K8S / "base")
    assert config_data(base)["DFD_DEVICE"] == "cpu"
    assert "nvidia.com/gpu" not in api_container(base)["resources"]["limits"]


def test_base_runs_the_cpu_image_and_the_gpu_overlay_the_cuda_image() -> None:
    """The base's image is the torch-free `cpu` target, serving on ONNX Runtime; the GPU
    overlay's is the `cuda` target, serving with torch (the only runtime on a GPU)."""
    base, gpu = render(K8S / "base"), render(K8S / "gpu")
    base_tag = api_container(base)["image"].rsplit(":", 1)[1]
    gpu_tag = api_container(gpu)["image"].rsplit(":", 1)[1]
    assert base_tag.endswith("-cpu"), base_tag
    assert re.search(r"-cu\d+$", gpu_tag), gpu_tag
    kustomizations = {
        name: (K8S / name / "kustomization.yaml").read_text() for name in KUSTOMIZATIONS
    }
    assert "--target cpu" in kustomizations["base"]
    assert "--target cuda" in kustomizations["gpu"]
    assert config_data(base)["DFD_BACKEND"] == "onnxruntime"
    assert config_data(gpu)["DFD_BACKEND"] == "torch"


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]i?)?", quantity)
    assert match, quantity
    return int(float(match.group(1)) * units.get(match.group(2) or "", 1))


def test_cpu_memory_follows_the_container_check(compose: Manifest) -> None:
    """The base's memory request covers the cpu image's RSS after traffic twice and the peak of a
    decode-bomb burst held to the decode budget, its limit that peak half as much again (the
    figures measured by scripts/container_check.sh, in DEPLOYMENT.md's image table); compose's
    limit is the same."""
    resources = api_container(render(K8S / "base"))["resources"]
    request = _bytes(resources["requests"]["memory"])
    limit = _bytes(resources["limits"]["memory"])
    row = next(
        line
        for line in (ROOT / "DEPLOYMENT.md").read_text().splitlines()
        if line.startswith("| `cpu` |")
    )
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    header = next(
        line
        for line in (ROOT / "DEPLOYMENT.md").read_text().splitlines()
        if line.startswith("| target |")
    )
    names = [cell.strip() for cell in header.strip("|").split("|")]
    after = float(cells[names.index("RSS after the demo answers")].split()[0])
    peak = float(cells[names.index("peak RSS in the burst")].split()[0])
    assert request >= max(2 * after, peak) * 1e6, (request, after, peak)
    assert limit >= 1.5 * peak * 1e6, (limit, peak)
    # compose (Docker) units are binary: 2g = 2 GiB
    mem_limit = str(compose["services"]["api"]["mem_limit"]).lower()
    assert _bytes(mem_limit[:-1] + mem_limit[-1].upper() + "i") == limit


# ------------------------------------------------------------------------------ compose ---
@pytest.fixture(scope="module")
def compose() -> Manifest:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_matches_compose_spec(compose: Manifest) -> None:
    import jsonschema

    schema_file = (
        importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    )
    schema = json.loads(schema_file.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    errors = sorted(validator_class(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_compose_services_and_profiles(compose: Manifest) -> None:
    services = compose["services"]
    api = services["api"]
    assert "profiles" not in api
    assert api["build"]["dockerfile"] == "Dockerfile"
    assert {"path": ".env", "required": False} in api["env_file"]
    assert any(str(port).endswith(":8000") for port in api["ports"])
    grace = int(str(api["stop_grace_period"]).rstrip("s"))
    assert grace > DEFAULT_DRAIN_TIMEOUT_S

    dev = services["dev"]
    assert dev["profiles"] == ["dev"]
    command = dev["command"]
    assert (
        "src.serve.app:create_app" in command and "--factory" in command and "--reload" in command
    )
    assert any(volume.startswith("./src:") for volume in dev["volumes"])

    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert services["grafana"]["profiles"] == ["monitoring"]


def test_compose_runs_the_cpu_image_and_its_model_repository(compose: Manifest) -> None:
    """The api (and dev) build the torch-free target and serve the model repository the image
    carries: nothing hides /app/checkpoints (a host folder without exports would stop the
    torch-free service) and nothing sets DFD_CHECKPOINT_PATH (with the images'
    DFD_MODEL_REPOSITORY, start-up would be refused)."""
    services = compose["services"]
    for name in ("api", "dev"):
        service = services[name]
        assert service["build"]["target"] == "cpu", name
        assert not any(":/app/checkpoints" in volume for volume in service.get("volumes", []))
    assert ":-cpu}" in services["api"]["image"]
    text = (ROOT / "docker-compose.yml").read_text()
    assert "DFD_CHECKPOINT_PATH" not in text


def test_compose_can_run_a_prebuilt_image_offline(compose: Manifest) -> None:
    api = compose["services"]["api"]
    assert "build" in api, "building stays the default route"
    assert api["image"].startswith("${DFD_IMAGE:-"), "no variable names a prebuilt image"
    assert api["pull_policy"] in {"missing", "if_not_present", "never"}
    guide = (ROOT / "DEPLOYMENT.md").read_text()
    assert "DFD_IMAGE=" in guide and "--no-build" in guide and "docker load" in guide


def test_every_documented_stop_waits_for_the_drain(compose: Manifest) -> None:
    """Plain ``docker stop``/``podman stop`` wait 10 s unless the container was started with a
    stop timeout; the image cannot carry one, so each documented start or stop must."""
    grace = int(str(compose["services"]["api"]["stop_grace_period"]).rstrip("s"))
    texts = {name: (ROOT / name).read_text() for name in ("DEPLOYMENT.md", "Dockerfile")}
    timeouts = [
        int(value)
        for text in texts.values()
        for value in re.findall(r"(?:--stop-timeout[ =]|stop -t )(\d+)", text)
    ]
    assert timeouts and all(value >= grace > DEFAULT_DRAIN_TIMEOUT_S for value in timeouts)
    code_blocks = texts["DEPLOYMENT.md"].split("```")[1::2]
    run_examples = [block for block in code_blocks if "docker run --rm" in block]
    assert run_examples and all("--stop-timeout" in block for block in run_examples)
    assert f"--podman-run-args=--stop-timeout={grace}" in texts["DEPLOYMENT.md"]


def test_prometheus_scrapes_the_api() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"][0]["targets"] == ["api:8000"]


def test_grafana_dashboard_covers_the_service_metrics() -> None:
    grafana = ROOT / "deploy" / "grafana"
    datasource = yaml.safe_load(
        (grafana / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    uid = datasource["datasources"][0]["uid"]
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    dashboard = json.loads((grafana / "dashboards" / "dfd-overview.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert all(panel["datasource"]["uid"] == uid for panel in dashboard["panels"])
    used = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for e in exprs
        for name in re.findall(r"\bdfd_\w+", e)
    }
    assert used <= METRIC_NAMES, f"unknown metrics: {used - METRIC_NAMES}"
    for required in (
        "dfd_http_requests_total",
        "dfd_http_request_duration_seconds",
        "dfd_batch_size",
    ):
        assert required in used
    assert {"dfd_queue_wait_seconds", "dfd_fake_probability"} <= used
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for word in ("request rate", "p99", "error", "batch size", "queue wait", "fake_prob"):
        assert word in titles


def test_dashboard_metrics_exist_in_the_service() -> None:
    metrics_module = ROOT / "src" / "serve" / "metrics.py"
    source = metrics_module.read_text()
    # prometheus-client adds _total to Counters and _info to Info metrics on exposition
    missing = [
        name for name in METRIC_NAMES if f'"{re.sub(r"_(total|info)$", "", name)}' not in source
    ]
    assert not missing, (
        f"metrics the dashboard uses but src/serve/metrics.py does not define: {missing}"
    )


# --------------------------------------------------------------------------- Dockerfile ---
TARGETS = ("cpu", "cuda")


@pytest.fixture(scope="module")
def dockerfile() -> list[str]:
    """Instructions, one a line: comment lines dropped first (as Docker does, also inside a
    continued RUN), then continuations joined."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    return [line.strip() for line in text.replace("\\\n", " ").splitlines() if line.strip()]


def _instructions(lines: list[str], name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in lines if line.split(None, 1)[0].upper() == name]


Stage = dict[str, Any]


def _stages(lines: list[str]) -> dict[str, Stage]:
    """``name -> {"parent": FROM's image or stage, "lines": its instructions}``, in order."""
    stages: dict[str, Stage] = {}
    current: list[str] | None = None
    for line in lines:
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest.strip(), flags=re.IGNORECASE)
            assert match, f"every stage is named: {line}"
            current = []
            stages[match.group(2)] = {"parent": match.group(1), "lines": current}
        elif current is not None:
            current.append(line)
    return stages


def _chain(stages: dict[str, Stage], name: str) -> list[str]:
    """The instructions that make stage ``name``: its ancestors' first, then its own."""
    lines: list[str] = []
    while name in stages:
        lines = stages[name]["lines"] + lines
        name = stages[name]["parent"]
    assert name == "${BASE_IMAGE}", f"every stage starts from BASE_IMAGE, not {name}"
    return lines


def _copies_from(lines: list[str]) -> dict[str, str]:
    """``destination -> source stage`` of the ``COPY --from=STAGE SRC DEST`` lines."""
    copies = {}
    for instruction in _instructions(lines, "COPY"):
        match = re.fullmatch(r"--from=(\S+)\s+(\S+)\s+(\S+)", instruction)
        if match:
            copies[match.group(3)] = match.group(1)
    return copies


def _env(lines: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in _instructions(lines, "ENV"):
        env.update(re.findall(r"(\w+)=(\S+)", value))
    return env


def _arg_default(lines: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in _instructions(lines, "ARG") if a.startswith(name + "=")]
    return value


def test_dockerfile_has_the_cpu_and_cuda_targets(dockerfile: list[str]) -> None:
    stages = _stages(dockerfile)
    assert set(TARGETS) <= stages.keys()
    assert list(stages)[-1] == "cpu", "a plain `docker build .` builds the torch-free image"
    assert "BASE_IMAGE=python:3.11-slim" in _instructions(dockerfile, "ARG")
    assert "TORCH_VARIANT=cpu" in _instructions(dockerfile, "ARG")
    assert any(arg.startswith("TORCH_INDEX_URL=") for arg in _instructions(dockerfile, "ARG"))
    for target in TARGETS:
        lines = _chain(stages, target)
        user = _instructions(lines, "USER")[-1]
        assert user.split(":")[0] not in {"root", "0"}, target
        (healthcheck,) = _instructions(lines, "HEALTHCHECK")
        assert "/ready" in healthcheck and "python" in healthcheck
        assert _instructions(lines, "STOPSIGNAL") == ["SIGTERM"]
        assert json.loads(_instructions(lines, "CMD")[-1]) == ["python", "-m", "src.serve"]
        env = _env(lines)
        assert env["DFD_HOST"] == "0.0.0.0"
        assert env["DFD_MODEL_REPOSITORY"] == "/app/checkpoints"
        assert "DFD_CHECKPOINT_PATH" not in env, "with the repository, start-up is refused"
        # the runtime stages install nothing: everything comes built from another stage
        assert all("install" not in run for run in _instructions(lines, "RUN")), target
        copies = _copies_from(lines)
        assert "/opt/venv" in copies and "/app/src" in copies, target
        assert not [c for c in _instructions(lines, "COPY") if not c.startswith("--from=")]


def test_cpu_image_installs_no_torch(dockerfile: list[str]) -> None:
    """The cpu image's venv comes from a stage whose every install reads the serving set or
    installs with --no-deps; nothing from the torch stack reaches it."""
    stages = _stages(dockerfile)
    cpu = _chain(stages, "cpu")
    venv_stage = _copies_from(cpu)["/opt/venv"]
    venv_lines = _chain(stages, venv_stage)
    text = "\n".join(venv_lines)
    assert "requirements-serve.txt" in text
    for banned in ("requirements-torch.txt", "requirements.txt", "TORCH_INDEX_URL"):
        assert banned not in text, f"{banned} in the cpu image's venv stage ({venv_stage})"
    assert not re.search(r"(?<![\w-])(torch|torchvision|timm|captum)==", text)
    installs = [
        command
        for run in _instructions(venv_lines, "RUN")
        for command in run.split(";")
        if " install " in command
    ]
    assert installs
    for command in installs:
        assert "-r /tmp/requirements-serve.txt" in command or "--no-deps" in command, command
    assert not TORCH_FAMILY & _pins("requirements-serve.txt").keys()
    assert "facenet-pytorch" in _pins("requirements-nodeps.txt"), "the MTCNN weights' wheel"
    # What else the cpu image copies is data and the service's code, never a Python install.
    for destination, source in _copies_from(cpu).items():
        if destination != "/opt/venv":
            assert source == "models" and not destination.startswith("/opt/"), destination


def test_cuda_image_has_the_torch_stack(dockerfile: list[str]) -> None:
    stages = _stages(dockerfile)
    venv_stage = _copies_from(_chain(stages, "cuda"))["/opt/venv"]
    text = "\n".join(_chain(stages, venv_stage))
    assert "-r /tmp/requirements-serve.txt -r /tmp/requirements-torch.txt" in text
    assert "${TORCH_INDEX_URL}" in text
    assert _env(_chain(stages, "cuda"))["DFD_BACKEND"] == "auto"


def test_images_carry_the_exported_demo_model_and_face_detector(dockerfile: list[str]) -> None:
    """Both images copy the demo model's version folder with the ONNX export made (and checked
    against torch) in the build, and MTCNN's ONNX graphs where MTCNN_ONNX_CACHE points."""
    stages = _stages(dockerfile)
    models = "\n".join(stages["models"]["lines"])
    assert 'python -m src.export --checkpoint "checkpoints/${DEMO_MODEL}/model.pt"' in models
    assert "python deploy/docker/face_detector_onnx.py /build/mtcnn-onnx" in models
    assert "COPY examples/*.jpg ./examples/" in dockerfile, "the export's parity images"
    demo = _arg_default(stages["models"]["lines"], "DEMO_MODEL")
    assert (ROOT / "checkpoints" / demo / "model.pt").is_file()
    model_name = demo.split("/")[0]
    from src.core.settings import Settings

    assert model_name == Settings.model_fields["model_name"].default, (
        "DFD_MODEL_REPOSITORY serves DFD_MODEL_NAME's model: the demo must be that one"
    )
    for target in TARGETS:
        lines = _chain(stages, target)
        assert _arg_default(stages[target]["lines"], "DEMO_MODEL") == demo
        copies = _copies_from(lines)
        env = _env(lines)
        assert copies["/app/checkpoints/${DEMO_MODEL}"] == "models"
        assert copies[env["MTCNN_ONNX_CACHE"]] == "models"
        assert any(
            c.startswith("--from=models /build/mtcnn-onnx ") for c in _instructions(lines, "COPY")
        )
    assert _env(_chain(stages, "cpu"))["DFD_BACKEND"] == "onnxruntime"


def test_face_detector_export_script_writes_graphs_that_the_service_reads(
    tmp_path: Path,
) -> None:
    """deploy/docker/face_detector_onnx.py (run in the image build) checks ONNX Runtime against
    torch and writes the graphs where ``load_graphs`` finds them without building anything."""
    from src.media import faces, faces_onnx

    cache = tmp_path / "mtcnn-onnx"
    result = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "docker" / "face_detector_onnx.py"), str(cache)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "MISMATCH" not in result.stdout
    for example in ("fake_0.jpg", "real_0.jpg"):
        assert f"{example}: 1 face(s) (onnx) / 1 (torch)" in result.stdout
    (folder,) = cache.iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["onet.onnx", "pnet.onnx", "rnet.onnx"]
    weights = faces._mtcnn_weight_dir()
    assert weights is not None
    graphs = faces_onnx.load_graphs(weights, cache=cache)
    assert graphs == {name: (folder / f"{name}.onnx").read_bytes() for name in graphs}


def test_dockerfile_bakes_in_no_secrets_and_only_the_demo_model(dockerfile: list[str]) -> None:
    text = "\n".join(dockerfile)
    assert "DFD_API_KEYS" not in text and "MODEL_API_KEY" not in text
    checkpoint_copies = [c for c in _instructions(dockerfile, "COPY") if "checkpoints" in c]
    assert checkpoint_copies
    assert all("checkpoints/${DEMO_MODEL}" in c for c in checkpoint_copies)


def test_dockerignore_keeps_the_context_small() -> None:
    entries = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "data", "runs", "tests", "bench/results"} <= set(entries)
    assert "!checkpoints/deepfake-detector" in entries
    # what the models stage reads: the export's parity images and the face detector's script
    assert entries.index("!examples/*.jpg") > entries.index("examples")
    assert entries.index("!deploy/docker") > entries.index("deploy")
    # ONNX files made on this machine stay out: the image's are made and checked in the build
    assert entries.index("checkpoints/**/*.onnx") > entries.index("!checkpoints/deepfake-detector")


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    assert hadolint is not None, "hadolint missing: pip install -r requirements-dev.txt"
    result = subprocess.run(
        [hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _pins(name: str) -> dict[str, str]:
    lines = (ROOT / name).read_text().splitlines()
    pairs = (line.split("#")[0].split(";")[0].strip().split("==") for line in lines)
    return {pair[0].split("[")[0].lower(): pair[1] for pair in pairs if len(pair) == 2}


TORCH_FAMILY = {"torch", "torchvision", "timm", "captum"}


def test_requirements_split_serving_without_torch_each_pin_written_once() -> None:
    serve, torch_stack = _pins("requirements-serve.txt"), _pins("requirements-torch.txt")
    everything = (ROOT / "requirements.txt").read_text().splitlines()
    rest = _pins("requirements.txt")
    # The serving set has no torch; the torch stack has it; requirements.txt includes both.
    assert {"fastapi", "uvicorn", "onnxruntime", "av", "prometheus-client"} <= serve.keys()
    assert not TORCH_FAMILY & serve.keys()
    assert {"torch", "torchvision", "timm"} <= torch_stack.keys()
    assert "-r requirements-serve.txt" in everything
    assert "-r requirements-torch.txt" in everything
    # One source of each pin: no package is pinned in two of the files.
    assert not serve.keys() & torch_stack.keys()
    assert not rest.keys() & (serve.keys() | torch_stack.keys())
    assert "requirements-torch.txt" in (ROOT / "Dockerfile").read_text()
