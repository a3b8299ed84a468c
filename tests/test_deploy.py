"""The deployment files agree with each other and with the service, so they cannot rot.

Fast and offline: parses deploy/k8s/, deploy/docker-compose.yml, the Makefile and the
workflows; no cluster, no containers. With `kubernetes-validate` installed (requirements-ci.txt,
installed by .ci/run) the manifests are also validated, strictly, against the Kubernetes
OpenAPI schemas that package ships.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAY = K8S / "model-from-s3"
REDIS_OVERLAY = K8S / "with-redis"
WORKFLOWS = ROOT / ".github" / "workflows"

BENTOML_PORT = 3000  # checked against BentoML's own default below
MODEL_STORE = "/home/bentoml/bento/models"  # $BENTO_PATH/models in BentoML's generated Dockerfile
KUBERNETES_VERSIONS = ("1.30.0", "1.33.0")  # the oldest and a current supported minor


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def resources(folder: Path = K8S) -> dict[str, dict[str, Any]]:
    """kind -> resource, from the files a kustomization.yaml lists (Secrets, of which there are
    several: "Secret/<name>"); a folder it lists (a base) is not followed."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    found: dict[str, dict[str, Any]] = {}
    for name in kustomization["resources"]:
        if (folder / name).is_dir():
            continue
        for doc in load_all(folder / name):
            kind = f"Secret/{doc['metadata']['name']}" if doc["kind"] == "Secret" else doc["kind"]
            assert kind not in found, f"two {kind}s"
            found[kind] = doc
    return found


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    return resources()


@pytest.fixture(scope="module")
def container(k8s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    containers = k8s["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p.get("name") == port)


def image_repository(image: str) -> str:
    """registry/name:tag -> registry/name (a ':' after the last '/' starts the tag)."""
    name, _, tag = image.rpartition(":")
    return name if name and "/" not in tag else image


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def test_bentoml_default_port_is_3000() -> None:
    from bentoml._internal.configuration.containers import BentoMLContainer

    assert BentoMLContainer.http.port.get() == BENTOML_PORT


def test_ports_agree(k8s: dict[str, dict[str, Any]], container: dict[str, Any]) -> None:
    assert [p["containerPort"] for p in container["ports"]] == [BENTOML_PORT]
    (service_port,) = k8s["Service"]["spec"]["ports"]
    assert port_number(container, service_port["targetPort"]) == BENTOML_PORT


def test_service_selects_the_pods(k8s: dict[str, dict[str, Any]]) -> None:
    deployment = k8s["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert k8s["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert k8s["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_probes(container: dict[str, Any]) -> None:
    readiness = container["readinessProbe"]["httpGet"]
    liveness = container["livenessProbe"]["httpGet"]
    startup = container["startupProbe"]["httpGet"]
    assert readiness["path"] == "/readyz"  # the model loaded and answered a warm-up batch
    assert liveness["path"] == "/livez"
    assert startup["path"] == "/livez"  # gates liveness while TensorFlow and the model load
    for probe in (readiness, liveness, startup):
        assert port_number(container, probe["port"]) == BENTOML_PORT
    startup_budget = (
        container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"]
    )
    assert startup_budget >= 120


def test_resources_are_sized(container: dict[str, Any]) -> None:
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert {"cpu", "memory"} <= requests.keys()
    assert "memory" in limits
    # Measured with the CLIP default: ~1.5 GiB PSS idle, ~2.0 GiB at 64 concurrent requests
    # (deploy/README.md, bench/memory.py): the request covers the loaded server.
    assert parse_quantity(requests["memory"]) >= 2 * 2**30
    assert parse_quantity(limits["memory"]) >= parse_quantity(requests["memory"])


def test_graceful_shutdown(k8s: dict[str, dict[str, Any]], container: dict[str, Any]) -> None:
    from serving.settings import Settings

    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    request_timeout = int(env.get("DEEPFAKE_REQUEST_TIMEOUT_S") or Settings().request_timeout_s)
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + request_timeout


def test_the_api_key_comes_from_a_secret_that_holds_none_in_git(
    k8s: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    """SECURITY.md's promise: DEEPFAKE_API_KEY from a Kubernetes Secret. The manifest declares
    it without a value (a re-apply never overwrites the key set in the cluster), and the pod
    needs it (no `optional`: no key, no pod, rather than an open service)."""
    secret = k8s["Secret/deepfake-api-key"]
    assert "data" not in secret and "stringData" not in secret
    (key,) = [e for e in container["env"] if e["name"] == "DEEPFAKE_API_KEY"]
    reference = key["valueFrom"]["secretKeyRef"]
    assert reference["name"] == secret["metadata"]["name"]
    assert reference["key"] in (K8S / "secret.yaml").read_text()  # the comment says how to set it
    assert reference.get("optional", False) is False
    assert "value" not in key


def test_the_pods_share_jobs_and_limits_through_a_redis_url_from_a_secret(
    k8s: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    """Two or more pods (the HPA's minimum): DEEPFAKE_JOB_STORE, a secret URL, from a Secret
    without data in git, required (no pod runs with jobs of its own by accident)."""
    from serving.settings import Settings

    (entry,) = [e for e in container["env"] if e["name"] == "DEEPFAKE_JOB_STORE"]
    assert "job_store" in Settings.model_fields and "value" not in entry
    reference = entry["valueFrom"]["secretKeyRef"]
    secret = k8s[f"Secret/{reference['name']}"]
    assert "data" not in secret and "stringData" not in secret
    assert reference.get("optional", False) is False
    manifest = next(p for p in K8S.glob("*.yaml") if secret in load_all(p))
    assert f'"{reference["key"]}":' in manifest.read_text()  # its comment says how to set it
    assert k8s["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2


def test_runs_as_non_root(k8s: dict[str, dict[str, Any]], container: dict[str, Any]) -> None:
    pod_security = k8s["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_hpa_targets_the_deployment(k8s: dict[str, dict[str, Any]], container: dict[str, Any]) -> None:
    hpa, deployment = k8s["HorizontalPodAutoscaler"], k8s["Deployment"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # CPU utilization is relative to the request; the HPA owns the replica count.
    assert any(m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])
    assert "cpu" in container["resources"]["requests"]
    assert "replicas" not in deployment["spec"]


def test_image_name_is_the_same_everywhere(container: dict[str, Any], compose: dict[str, Any]) -> None:
    makefile = (ROOT / "Makefile").read_text()
    image_tag = re.search(r"^IMAGE_TAG \?= (\S+)$", makefile, re.M).group(1)
    name = image_repository(image_tag)
    assert image_repository(container["image"]) == name
    kustomize_images = yaml.safe_load((K8S / "kustomization.yaml").read_text())["images"]
    assert [i["name"] for i in kustomize_images] == [name]
    compose_image = compose["services"]["deepfake-detector"]["image"]
    default = re.fullmatch(r"\$\{\w+:-(.+)\}", compose_image).group(1)
    assert default == image_tag


def test_compose_matches_the_service(compose: dict[str, Any], container: dict[str, Any]) -> None:
    service = compose["services"]["deepfake-detector"]
    assert "ports" not in service  # reached through the proxy only
    assert "/readyz" in " ".join(service["healthcheck"]["test"])
    assert f":{BENTOML_PORT}/" in " ".join(service["healthcheck"]["test"])
    assert parse_quantity(service["mem_limit"]) == parse_quantity(container["resources"]["limits"]["memory"])
    grace = int(service["stop_grace_period"].rstrip("s"))
    assert grace == k8s_grace()


def test_compose_runs_two_replicas_behind_a_trusted_proxy_sharing_redis(compose: dict[str, Any]) -> None:
    import ipaddress
    from urllib.parse import urlsplit

    from serving.edge import ENVELOPE_BYTES
    from serving.redis_link import check_url
    from serving.settings import Settings

    services, replicas = compose["services"], compose["services"]["deepfake-detector"]
    env = replicas["environment"]
    assert replicas["deploy"]["replicas"] >= 2
    # The proxy publishes the port, forwards to the replicas' port and appends the address it
    # saw to X-Forwarded-For; the replicas trust that header from its address, and only from it.
    proxy = services["proxy"]
    (published,) = proxy["ports"]
    config = compose["configs"][proxy["configs"][0]["source"]]["content"]
    assert f"listen {published.rsplit(':', 1)[1]};" in config
    assert re.search(rf"proxy_pass http://\$\$(\w+):{BENTOML_PORT};", config)
    assert "set $$replicas deepfake-detector;" in config
    assert "proxy_set_header X-Forwarded-For $$proxy_add_x_forwarded_for;" in config
    body = re.search(r"client_max_body_size (\d+)m;", config)
    assert body and int(body.group(1)) * 2**20 >= Settings().video_max_bytes + ENVELOPE_BYTES
    address = ipaddress.ip_address(proxy["networks"]["front"]["ipv4_address"])
    trusted = [ipaddress.ip_network(n) for n in env["DEEPFAKE_TRUSTED_PROXIES"].split(",")]
    assert env["DEEPFAKE_TRUST_FORWARDED_FOR"] == "true" and [address in n for n in trusted] == [True]
    subnet = compose["networks"]["front"]["ipam"]["config"][0]["subnet"]
    assert address in ipaddress.ip_network(subnet)
    # Jobs and limits in Redis, on a network only the replicas share with it, never published.
    url = re.fullmatch(r"\$\{DEEPFAKE_JOB_STORE:-(.+)\}", env["DEEPFAKE_JOB_STORE"]).group(1)
    check_url(url)
    redis = services[urlsplit(url).hostname]
    assert "ports" not in redis and "redis-server" in redis["command"]
    (shared,) = set(redis["networks"]) & set(replicas["networks"])
    assert compose["networks"][shared]["internal"] is True
    assert set(proxy["networks"]) & set(redis["networks"]) == set()


def k8s_grace() -> int:
    return resources()["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]


def parse_quantity(value: str | int) -> float:
    """Kubernetes / compose memory quantities: 1536Mi, 2Gi, 2g, 1536m (compose: MiB)."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 2**10, "m": 2**20, "g": 2**30, "": 1}
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", str(value)).groups()
    return float(number) * units[unit]


# ---- the model-from-s3 overlay: a deploy-time model in the pod's own store


def merge(base: Any, patch: Any) -> Any:
    """A strategic merge good enough for these patches: lists of named items merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = merge(base[key], value) if key in base else value
        return out
    if isinstance(base, list) and isinstance(patch, list) and all("name" in i for i in base + patch):
        out = [copy.deepcopy(i) for i in base]
        for item in patch:
            index = next((n for n, b in enumerate(out) if b["name"] == item["name"]), None)
            if index is None:
                out.append(item)
            else:
                out[index] = merge(out[index], item)
        return out
    return patch


@pytest.fixture(scope="module")
def overlay_deployment(k8s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    kustomization = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["../"]
    (patch_file,) = [p["path"] for p in kustomization["patches"]]
    (patch,) = load_all(OVERLAY / patch_file)
    assert (patch["kind"], patch["metadata"]["name"]) == ("Deployment", k8s["Deployment"]["metadata"]["name"])
    return merge(k8s["Deployment"], patch)


def test_overlay_serves_the_fetched_model(
    overlay_deployment: dict[str, Any], container: dict[str, Any]
) -> None:
    pod = overlay_deployment["spec"]["template"]["spec"]
    volumes = {v["name"] for v in pod["volumes"]}
    init = {c["name"]: c for c in pod["initContainers"]}
    (server,) = pod["containers"]
    # The import runs in the server's own image, so kustomize's `images:` rewrites both.
    assert init["import-model"]["image"] == container["image"]
    assert "bentoml models import /fetch/model.bentomodel" in init["import-model"]["args"][0]
    store_mounts = [m for m in server["volumeMounts"] if m["mountPath"] == MODEL_STORE]
    assert len(store_mounts) == 1 and store_mounts[0]["name"] in volumes
    for c in (*pod["initContainers"], server):
        assert {m["name"] for m in c.get("volumeMounts", [])} <= volumes
    generator = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())["configMapGenerator"]
    keys = {literal.split("=", 1)[0] for g in generator for literal in g["literals"]}
    assert {"DEEPFAKE_MODEL_TAG", "MODEL_URL"} <= keys
    env = {e["name"] for e in server["env"]}
    assert {"DEEPFAKE_MODEL_TAG", "DEEPFAKE_REQUEST_TIMEOUT_S"} <= env  # patched in, base kept


# ---- the with-redis overlay: a small Redis for clusters that have none


@pytest.fixture(scope="module")
def redis_overlay() -> dict[str, dict[str, Any]]:
    kustomization = yaml.safe_load((REDIS_OVERLAY / "kustomization.yaml").read_text())
    assert kustomization["resources"][0] == "../"
    return resources(REDIS_OVERLAY)


def test_redis_overlay_is_reached_as_the_url_says_by_the_model_server_only(
    redis_overlay: dict[str, dict[str, Any]], k8s: dict[str, dict[str, Any]]
) -> None:
    deployment, service = redis_overlay["Deployment"], redis_overlay["Service"]
    pod = deployment["spec"]["template"]
    (redis,) = pod["spec"]["containers"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert port_number(redis, port["targetPort"]) == 6379
    # The URL the comments tell to set names this Service and port.
    comments = (REDIS_OVERLAY / "kustomization.yaml").read_text()
    assert f"@{service['metadata']['name']}:{port['port']}/0" in comments
    # The model server's selectors never take the Redis pod, and it admits only their pods.
    for selector in (
        k8s["Service"]["spec"]["selector"],
        k8s["Deployment"]["spec"]["selector"]["matchLabels"],
        k8s["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ):
        assert not selector.items() <= pod["metadata"]["labels"].items()
    policy = redis_overlay["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    ((rule,),) = [r["from"] for r in policy["ingress"]]
    server_labels = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert rule["podSelector"]["matchLabels"].items() <= server_labels.items()


def test_redis_overlay_keeps_its_password_out_of_git(redis_overlay: dict[str, dict[str, Any]]) -> None:
    (redis,) = redis_overlay["Deployment"]["spec"]["template"]["spec"]["containers"]
    (password,) = redis["env"]
    secret = redis_overlay[f"Secret/{password['valueFrom']['secretKeyRef']['name']}"]
    assert "data" not in secret and "stringData" not in secret
    assert f"$({password['name']})" in redis["args"]  # --requirepass, from the Secret
    assert redis["securityContext"]["readOnlyRootFilesystem"] is True
    assert redis_overlay["Deployment"]["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]


# ---- Kubernetes schemas (offline, shipped by kubernetes-validate)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_match_kubernetes_schemas(
    version: str,
    k8s: dict[str, dict[str, Any]],
    overlay_deployment: dict[str, Any],
    redis_overlay: dict[str, dict[str, Any]],
) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="needs kubernetes-validate (requirements-ci.txt; .ci/run installs it)"
    )
    for resource in [*k8s.values(), overlay_deployment, *redis_overlay.values()]:
        kubernetes_validate.validate(resource, version, strict=True)
    broken = copy.deepcopy(k8s["Deployment"])
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # a typo must fail
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


# ---- workflows: parsed here, linted by actionlint in .ci/run


def test_workflows_keep_registry_and_credentials_out_of_the_files() -> None:
    release = (WORKFLOWS / "release.yml").read_text()
    assert "${{ vars.REGISTRY }}" in release and "${{ vars.IMAGE_NAME }}" in release
    assert "${{ secrets.REGISTRY_USERNAME }}" in release and "${{ secrets.REGISTRY_PASSWORD }}" in release
    assert "${{ secrets.KUBECONFIG }}" in release
    for path in WORKFLOWS.glob("*.yml"):
        workflow = yaml.safe_load(path.read_text())
        assert workflow["jobs"], path
        for job in workflow["jobs"].values():
            if "uses" in job:  # a reusable workflow call has no steps
                continue
            for step in job["steps"]:
                assert "password:" not in str(step.get("run", "")), (path, step)
