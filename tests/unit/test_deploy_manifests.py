"""The deployment files are valid and agree with each other and with the code.

- every YAML file under deploy/ parses;
- docker-compose.yml matches the Compose Specification's JSON schema (the copy that
  the check-jsonschema package ships) and resolves with ``docker compose config``
  where this machine's Docker client can do that; its services, images, dependencies,
  volumes and commands are checked by hand either way;
- the Kubernetes manifests match the Kubernetes API schemas (kubernetes-validate,
  strict: unknown fields fail). Strimzi's KafkaTopic/KafkaUser and the Kustomization
  have no schema there: they are checked against the small schemas below, which cover
  only the fields these manifests use (types, ranges, required keys), not the CRDs;
- every sink command in either file parses with the real ``flarestream`` parser.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
K8S = DEPLOY / "k8s"
K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
SINKS = ("tensorboard", "mlflow", "archive")
SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|PRIVATE|_KEY$", re.I)


def load_all(path: Path) -> list[Any]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def pom_kafka_version() -> str:
    ns = "{http://maven.apache.org/POM/4.0.0}"
    node = ET.parse(DEPLOY / "pom.xml").getroot().find(f"{ns}properties/{ns}kafka.version")
    assert node is not None and node.text
    return node.text.strip()


def project_version() -> str:
    match = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert match
    return match.group(1)


def parse_cli(argv: list[str]) -> Any:
    """Parse ``flarestream ARGV`` with the real parser (subcommands not written yet are
    left out, as in tests/conftest.py); fails the test on a usage error."""
    import flarestream.cli as cli

    saved = cli.SUBCOMMANDS
    cli.SUBCOMMANDS = tuple(s for s in saved if importlib.util.find_spec(s[1]))
    try:
        parser = cli.build_parser()
    finally:
        cli.SUBCOMMANDS = saved
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"`flarestream {' '.join(argv)}` is not a valid command (exit {exc.code})")


# -- every YAML file ---------------------------------------------------------------
def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def test_deploy_has_the_compose_file_and_the_kubernetes_manifests() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in yaml_files()}
    assert "compose/docker-compose.yml" in names
    assert {f"k8s/sink-{s}.yaml" for s in SINKS} <= names
    assert {"k8s/kafka-topic.yaml", "k8s/replay-job.yaml", "k8s/kustomization.yaml"} <= names


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_every_yaml_file_under_deploy_parses_to_mappings(path: Path) -> None:
    docs = load_all(path)
    assert docs, f"{path} is empty"
    assert all(isinstance(doc, dict) for doc in docs)


# -- docker compose ------------------------------------------------------------------
def compose_schema() -> dict[str, Any]:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads((vendor / "compose-spec.json").read_text())
    return schema


def compose_problems(doc: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(
        compose_schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(doc)]


def compose_client() -> list[str] | None:
    """The argv prefix of a Docker Compose client that works here, if any (``config``
    needs no Docker engine)."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for argv in candidates:
        done = subprocess.run(
            [*argv, "version"], capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode == 0:
            return argv
    return None


_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(:?-([^}]*))?\}|\$\{[^}]*\}|\$\w+")


def interpolate(node: Any) -> Any:
    """Compose's variable interpolation with nothing set: ``${VAR:-default}`` and
    ``${VAR-default}`` give the default, ``$$`` a literal ``$``; any other form fails
    (this file uses no other)."""
    if isinstance(node, dict):
        return {k: interpolate(v) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v) for v in node]
    if not isinstance(node, str):
        return node

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group(1) is None or match.group(2) is None:
            pytest.fail(f"compose variable without a default: {match.group(0)}")
        return match.group(3)

    return _VARIABLE.sub(one, node)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose model: as ``docker compose config`` resolves it where a client can,
    else as written (YAML anchors and merge keys resolved by the loader)."""
    client = compose_client()
    if client is None:
        (doc,) = load_all(COMPOSE)
        return dict(interpolate(doc))
    done = subprocess.run(
        [*client, "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=COMPOSE.parent,
    )
    assert done.returncode == 0, f"docker compose config failed:\n{done.stderr}"
    resolved = yaml.safe_load(done.stdout)
    assert isinstance(resolved, dict)
    return resolved


def test_compose_file_matches_the_compose_specification() -> None:
    (doc,) = load_all(COMPOSE)
    assert compose_problems(doc) == []


def test_compose_schema_check_catches_a_misspelt_key() -> None:
    (doc,) = load_all(COMPOSE)
    broken = copy.deepcopy(doc)
    broken["services"]["sink-archive"]["depend_on"] = ["kafka-1"]
    assert any("depend_on" in p for p in compose_problems(broken))


def test_compose_services_dependencies_and_volumes_exist(compose: dict[str, Any]) -> None:
    services = compose["services"]
    expected = {"kafka-1", "kafka-2", "kafka-3", "topic-setup", "mlflow", "tensorboard"}
    assert expected | {f"sink-{s}" for s in SINKS} <= set(services)
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        assert set(deps) <= set(services), f"{name} depends on a missing service"
        assert svc.get("image"), f"{name} has no image"
        for mount in svc.get("volumes") or []:
            source = mount["source"] if isinstance(mount, dict) else mount.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} mounts undeclared volume {source}"
    for sink in SINKS:
        deps = services[f"sink-{sink}"]["depends_on"]
        assert deps["topic-setup"]["condition"] == "service_completed_successfully"
    for n in (1, 2, 3):
        assert services["topic-setup"]["depends_on"][f"kafka-{n}"]["condition"] == (
            "service_healthy"
        )
        assert services[f"kafka-{n}"]["healthcheck"]["test"]


def test_compose_pins_kafka_4_like_the_local_broker(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("kafka-1", "kafka-2", "kafka-3", "topic-setup"):
        assert services[name]["image"] == f"apache/kafka:{pom_kafka_version()}"
    assert pom_kafka_version().startswith("4.")
    for name, svc in services.items():
        image = str(svc["image"])
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), name


def env_of(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_compose_brokers_form_one_durable_kraft_quorum(compose: dict[str, Any]) -> None:
    services = compose["services"]
    envs = [env_of(services[f"kafka-{n}"]) for n in (1, 2, 3)]
    assert [e["KAFKA_NODE_ID"] for e in envs] == ["1", "2", "3"]
    assert len({e["CLUSTER_ID"] for e in envs}) == 1
    assert {e["KAFKA_CONTROLLER_QUORUM_VOTERS"] for e in envs} == {
        "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
    }
    for env in envs:
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2"
        assert env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"] == "false"
    script = " ".join(services["topic-setup"]["command"])
    assert "--replication-factor 3" in script
    assert "min.insync.replicas=2" in script and "retention.ms=" in script
    assert env_of(services["topic-setup"])["RETENTION_MS"] == "2592000000"


def test_compose_sink_commands_parse_with_the_flarestream_cli(compose: dict[str, Any]) -> None:
    groups = set()
    for sink in SINKS:
        svc = compose["services"][f"sink-{sink}"]
        command = [str(a) for a in svc["command"]]
        args = parse_cli(command)
        assert (args.command, args.sink_name, args.topic) == ("sink", sink, "flare.analytics")
        groups.add(args.group)
    assert groups == {f"flarestream.{s}" for s in SINKS}  # each sink its own group
    assert "--logdir" in compose["services"]["sink-tensorboard"]["command"]
    assert "http://mlflow:5000" in compose["services"]["sink-mlflow"]["command"]


def test_compose_takes_secrets_from_an_env_file_never_inline(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for key, value in env_of(svc).items():
            assert not SECRETISH.search(key) or not value, f"{name}: {key} is set inline"
    (raw,) = load_all(COMPOSE)
    for sink in SINKS:
        env_files = raw["services"][f"sink-{sink}"]["env_file"]
        assert env_files == [{"path": "flarestream.env", "required": False}]
    example = (COMPOSE.parent / "flarestream.env.example").read_text()
    assert "FLARESTREAM_KAFKA_SECURITY_PROTOCOL" in example
    assert not re.search(r"^[A-Z_]*(PASSWORD|SECRET|TOKEN)=\S", example, re.M)


def test_compose_image_is_built_from_the_project_with_existing_extras() -> None:
    (raw,) = load_all(COMPOSE)
    build = raw["services"]["sink-archive"]["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == REPO
    dockerfile = (context / build["dockerfile"]).read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    for line in re.findall(r"^COPY (.+)$", dockerfile, re.M):
        for source in line.split()[:-1]:
            assert (REPO / source).exists(), f"Dockerfile copies missing {source}"
    extras = re.search(r"^ARG EXTRAS=(.+)$", dockerfile, re.M)
    assert extras
    pyproject = (REPO / "pyproject.toml").read_text()
    for extra in extras.group(1).split(","):
        assert re.search(rf"^{extra} = \[", pyproject, re.M), f"no extra {extra!r}"
    assert 'ENTRYPOINT ["flarestream"]' in dockerfile


# -- Kubernetes ------------------------------------------------------------------------
def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, doc) for p in sorted(K8S.glob("*.yaml")) for doc in load_all(p)]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in k8s_docs() if doc["kind"] == kind]


CRD_KINDS = {"KafkaTopic", "KafkaUser", "Kustomization"}

_K8S_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253}
_STRIMZI_META = {
    "type": "object",
    "required": ["name", "labels"],
    "properties": {
        "name": _K8S_NAME,
        "labels": {
            "type": "object",
            "required": ["strimzi.io/cluster"],
            "additionalProperties": {"type": "string"},
        },
    },
}
# Only the fields these manifests use, with the types and ranges Strimzi documents.
STRIMZI_SCHEMAS: dict[str, dict[str, Any]] = {
    "KafkaTopic": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "kafka.strimzi.io/v1beta2"},
            "kind": {"const": "KafkaTopic"},
            "metadata": _STRIMZI_META,
            "spec": {
                "type": "object",
                "required": ["partitions", "replicas"],
                "additionalProperties": False,
                "properties": {
                    "topicName": {"type": "string", "pattern": r"^[A-Za-z0-9._-]{1,249}$"},
                    "partitions": {"type": "integer", "minimum": 1},
                    "replicas": {"type": "integer", "minimum": 1, "maximum": 32767},
                    "config": {
                        "type": "object",
                        "additionalProperties": {"type": ["string", "integer", "boolean"]},
                    },
                },
            },
        },
    },
    "KafkaUser": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "kafka.strimzi.io/v1beta2"},
            "kind": {"const": "KafkaUser"},
            "metadata": _STRIMZI_META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "authentication": {
                        "type": "object",
                        "properties": {"type": {"enum": ["tls", "tls-external", "scram-sha-512"]}},
                        "required": ["type"],
                    },
                    "authorization": {
                        "type": "object",
                        "required": ["type", "acls"],
                        "properties": {
                            "type": {"const": "simple"},
                            "acls": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["resource", "operations"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "resource": {
                                            "type": "object",
                                            "required": ["type"],
                                            "properties": {
                                                "type": {
                                                    "enum": [
                                                        "topic",
                                                        "group",
                                                        "cluster",
                                                        "transactionalId",
                                                    ]
                                                },
                                                "name": {"type": "string"},
                                                "patternType": {"enum": ["literal", "prefix"]},
                                            },
                                        },
                                        "operations": {
                                            "type": "array",
                                            "minItems": 1,
                                            "items": {
                                                "enum": [
                                                    "Read",
                                                    "Write",
                                                    "Create",
                                                    "Delete",
                                                    "Alter",
                                                    "Describe",
                                                    "ClusterAction",
                                                    "AlterConfigs",
                                                    "DescribeConfigs",
                                                    "IdempotentWrite",
                                                    "All",
                                                ]
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    "Kustomization": {
        "type": "object",
        "required": ["apiVersion", "kind", "resources"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "kustomize.config.k8s.io/v1beta1"},
            "kind": {"const": "Kustomization"},
            "labels": {"type": "array"},
            "resources": {"type": "array", "items": {"type": "string"}},
            "images": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string"},
                        "newName": {"type": "string"},
                        "newTag": {"type": "string"},
                    },
                },
            },
        },
    },
}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_match_the_api_schemas(version: str) -> None:
    checked = set()
    for name, doc in k8s_docs():
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} {doc['kind']} is not valid Kubernetes {version}: {exc}")
        checked.add(doc["kind"])
    assert {"ConfigMap", "Deployment", "Job", "PersistentVolumeClaim", "Service"} <= checked


def test_kubernetes_schema_check_catches_a_misspelt_field() -> None:
    (deployment,) = load_all(K8S / "sink-archive.yaml")
    deployment["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="resource"):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


def test_strimzi_and_kustomize_documents_match_the_fields_they_use() -> None:
    seen = set()
    for name, doc in k8s_docs():
        if doc["kind"] in CRD_KINDS:
            validator = jsonschema.Draft202012Validator(STRIMZI_SCHEMAS[doc["kind"]])
            problems = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(doc)]
            assert problems == [], name
            seen.add(doc["kind"])
    assert seen == CRD_KINDS


def topic_spec(dlq: bool = False) -> dict[str, Any]:
    (topic,) = [t for t in of_kind("KafkaTopic") if t["spec"]["topicName"].endswith(".dlq") == dlq]
    return dict(topic["spec"])


def test_kafka_topic_is_replicated_three_times_and_retained_for_audit() -> None:
    config = load_all(K8S / "configmap.yaml")[0]["data"]
    spec = topic_spec()
    assert spec["topicName"] == config["FLARESTREAM_TOPIC"]
    assert spec["replicas"] == 3 and spec["config"]["min.insync.replicas"] == 2
    assert spec["config"]["retention.ms"] == 30 * 24 * 3600 * 1000
    assert 12 <= spec["partitions"] <= 48
    dlq = topic_spec(dlq=True)
    assert dlq["topicName"] == f"{spec['topicName']}.dlq"
    assert (dlq["replicas"], dlq["config"]["min.insync.replicas"]) == (3, 2)


def containers(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from doc["spec"]["template"]["spec"]["containers"]


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of container arguments."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in args]


def test_each_sink_deployment_is_its_own_group_and_scales_to_the_partitions() -> None:
    env = load_all(K8S / "configmap.yaml")[0]["data"]
    partitions = topic_spec()["partitions"]
    groups = set()
    for sink in SINKS:
        (deployment,) = load_all(K8S / f"sink-{sink}.yaml")
        assert 1 <= deployment["spec"]["replicas"] <= partitions
        (container,) = containers(deployment)
        args = parse_cli(expand(container["args"], env))
        assert (args.command, args.sink_name, args.topic) == ("sink", sink, "flare.analytics")
        groups.add(args.group)
        assert container["envFrom"] == [{"configMapRef": {"name": "flarestream-config"}}]
        text = (K8S / f"sink-{sink}.yaml").read_text()
        assert f"partition count ({partitions})" in text  # the comment says how far to scale
    assert groups == {f"flarestream.{s}" for s in SINKS}


def test_manifests_reference_secrets_and_never_hold_their_values() -> None:
    assert of_kind("Secret") == []
    for name, doc in k8s_docs():
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        for container in containers(doc):
            for var in container.get("env", []):
                if SECRETISH.search(var["name"]):
                    assert "value" not in var, f"{name}: {var['name']} has an inline value"
                    assert var["valueFrom"]["secretKeyRef"]["name"]
    config = load_all(K8S / "configmap.yaml")[0]["data"]
    assert not [k for k in config if SECRETISH.search(k)]
    assert config["FLARESTREAM_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"


def test_references_between_manifests_resolve() -> None:
    configmaps = {d["metadata"]["name"] for d in of_kind("ConfigMap")}
    claims = {d["metadata"]["name"] for d in of_kind("PersistentVolumeClaim")}
    workloads = of_kind("Deployment") + of_kind("Job")
    for doc in workloads:
        pod = doc["spec"]["template"]["spec"]
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
        mounted = {v["name"] for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            assert {m["name"] for m in container.get("volumeMounts", [])} <= mounted
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps
    for deployment in of_kind("Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for service in of_kind("Service"):
        assert any(
            service["spec"]["selector"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
            for d in of_kind("Deployment")
        )


def test_every_container_has_resource_requests_and_limits() -> None:
    for name, doc in k8s_docs():
        if doc["kind"] in ("Deployment", "Job"):
            for container in containers(doc):
                resources_ = container["resources"]
                for part in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(resources_[part]), f"{name}: {part}"


def test_kustomization_lists_every_manifest_but_the_replay_template() -> None:
    (kustomization,) = load_all(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")}
    assert listed == present - {"kustomization.yaml", "replay-job.yaml"}
    (image,) = kustomization["images"]
    assert (image["name"], image["newTag"]) == ("flarestream", project_version())


def test_replay_job_is_a_template_whose_command_parses() -> None:
    (job,) = load_all(K8S / "replay-job.yaml")
    assert "generateName" in job["metadata"] and "name" not in job["metadata"]
    (container,) = containers(job)
    assert container["image"] == f"flarestream:{project_version()}"
    args = container["args"]
    assert args[:2] == ["replay", "--from-timestamp"]
    assert args[args.index("--sink") + 1] == "tensorboard"
    env = load_all(K8S / "configmap.yaml")[0]["data"]
    parse_cli(expand(args, env))
