"""Static checks of docker/: there is no Docker engine in CI, so the compose
file, the Dockerfile and the Prometheus config are checked for consistency
with each other and with the code (the worker's flags, topic names, metrics
port), and with ``promtool`` when it is installed.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stream_unlearn import wire
from stream_unlearn.cli import build_parser
from stream_unlearn.config import TOPIC_SUMMARIES, WorkerConfig
from stream_unlearn.liveness import HEALTH_PATH

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
PROMETHEUS_YML = DOCKER / "prometheus.yml"
PRODUCER_SH = DOCKER / "demo-producer.sh"

METRICS_PORT = 9464
SERVICES = {"kafka", "topics", "worker", "producer", "prometheus", "grafana"}
WORKER_FLAGS = (
    "--bootstrap-servers", "--insert-topic", "--delete-topic", "--dead-letter-topic", "--receipts-topic",
    "--model-topic", "--algorithm", "--k", "--seed", "--snapshot-dir", "--snapshot-interval",
    "--metrics-port", "--metrics-addr",
)  # fmt: skip
TOPICS = {
    "STREAM_UNLEARN_INSERT_TOPIC": wire.TOPIC_INSERTS,
    "STREAM_UNLEARN_DELETE_TOPIC": wire.TOPIC_DELETES,
    "STREAM_UNLEARN_DEAD_LETTER_TOPIC": wire.TOPIC_DEAD_LETTER,
    "STREAM_UNLEARN_RECEIPTS_TOPIC": wire.TOPIC_RECEIPTS,
    "STREAM_UNLEARN_MODEL_TOPIC": wire.TOPIC_MODEL,
    "STREAM_UNLEARN_SUMMARIES_TOPIC": TOPIC_SUMMARIES,
}


# ---------------------------------------------------------------- helpers


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def env(service: dict) -> dict[str, str]:
    e = service.get("environment", {})
    if isinstance(e, list):
        e = dict(item.split("=", 1) for item in e)
    return {k: str(v) for k, v in e.items()}


def parse_port(spec: str | int) -> tuple[str | None, int, int]:
    """'127.0.0.1:3000:3000' / '3000:3000' / '3000' -> (host ip, host port, container port)."""
    parts = str(spec).split(":")
    if len(parts) == 3:
        return parts[0], int(parts[1]), int(parts[2].split("/")[0])
    if len(parts) == 2:
        return None, int(parts[0]), int(parts[1].split("/")[0])
    return None, int(parts[0]), int(parts[0])


def subcommand(name: str) -> argparse.ArgumentParser | None:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(name)
    return None


def long_options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings if o.startswith("--")} - {"--help"}


def env_name(flag: str) -> str:
    return "STREAM_UNLEARN_" + flag.lstrip("-").replace("-", "_").upper()


def dockerfile_stages() -> list[tuple[str, list[tuple[str, str]]]]:
    """[(stage name, [(INSTRUCTION, args)])] with line continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[tuple[str, list[tuple[str, str]]]] = [("<global>", [])]
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, args = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.IGNORECASE)
            stages.append((m.group(2) or m.group(1), [("FROM", m.group(1))]))
        else:
            stages[-1][1].append((instr, args.strip()))
    return stages


def final_stage() -> list[tuple[str, str]]:
    return dockerfile_stages()[-1][1]


def global_args() -> dict[str, str]:
    out = {}
    for instr, args in dockerfile_stages()[0][1]:
        if instr == "ARG" and "=" in args:
            k, v = args.split("=", 1)
            out[k] = v
    return out


# ---------------------------------------------------------------- compose


def test_compose_services_and_dependencies():
    c = compose()
    assert set(c["services"]) == SERVICES
    for name, svc in c["services"].items():
        assert "image" in svc or "build" in svc, name
        deps = svc.get("depends_on", [])
        for dep in deps if isinstance(deps, list) else deps.keys():
            assert dep in c["services"], (name, dep)
    assert c["services"]["worker"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert c["services"]["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert "healthcheck" in c["services"]["kafka"]


def test_compose_volumes_and_mounted_paths_exist():
    c = compose()
    declared = set(c.get("volumes", {}))
    used = set()
    for name, svc in c["services"].items():
        for v in svc.get("volumes", []):
            src, dst, *mode = v.split(":")
            assert dst.startswith("/"), (name, v)
            if src.startswith((".", "/")):
                path = (COMPOSE.parent / src).resolve()
                assert path.exists(), f"{name}: bind mount source {path} does not exist"
                assert mode == ["ro"], f"{name}: bind mounts should be read-only: {v}"
            else:
                assert src in declared, f"{name}: named volume {src!r} not declared"
                used.add(src)
    assert declared == used, f"declared but unused volumes: {declared - used}"
    worker = c["services"]["worker"]
    (snap,) = [v for v in worker["volumes"] if v.startswith("snapshots:")]
    assert snap.split(":")[1] == env(worker)["STREAM_UNLEARN_SNAPSHOT_DIR"]


def test_compose_builds_the_worker_from_the_dockerfile():
    c = compose()
    for name in ("worker", "producer"):
        build = c["services"][name]["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == ROOT
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    assert c["services"]["worker"]["image"] == c["services"]["producer"]["image"]
    # every COPY source of the Dockerfile is in the build context
    for _stage, instrs in dockerfile_stages():
        for instr, args in instrs:
            if instr == "COPY" and "--from" not in args:
                for src in shlex.split(args)[:-1]:
                    assert (ROOT / src).exists(), src
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text()
    for needed in ("pyproject.toml", "README.md", "stream_unlearn/"):
        assert f"!{needed}" in ignore


def test_compose_ports():
    c = compose()
    seen = set()
    expected = {"worker": METRICS_PORT, "prometheus": 9090, "grafana": 3000, "kafka": 29092}
    for name, svc in c["services"].items():
        for spec in svc.get("ports", []):
            ip, host, container = parse_port(spec)
            assert host not in seen, f"host port {host} published twice"
            seen.add(host)
            assert container == expected[name], (name, spec)
            assert ip == "127.0.0.1", f"{name}: publish on loopback only ({spec})"
    assert {name for name, svc in c["services"].items() if svc.get("ports")} == set(expected)
    kafka = env(c["services"]["kafka"])
    assert "HOST://:29092" in kafka["KAFKA_LISTENERS"]
    assert "PLAINTEXT://kafka:9092" in kafka["KAFKA_ADVERTISED_LISTENERS"]


def test_kafka_is_single_node_kraft():
    k = env(compose()["services"]["kafka"])
    assert k["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert k["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{k['KAFKA_NODE_ID']}@kafka:9093"
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "KAFKA_DEFAULT_REPLICATION_FACTOR"):  # fmt: skip
        assert k[key] == "1", key
    listeners = {p.split("://")[0] for p in k["KAFKA_LISTENERS"].split(",")}
    mapped = {p.split(":")[0] for p in k["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")}
    assert listeners == mapped
    assert len(k["CLUSTER_ID"]) == 22


def test_topics_service_creates_every_topic():
    c = compose()
    script = "\n".join(c["services"]["topics"]["command"])
    created = dict(re.findall(r"--topic (\S+) --partitions (\d+)", script))
    assert set(created) == set(TOPICS.values())
    assert created[wire.TOPIC_INSERTS] == created[wire.TOPIC_DELETES], "inserts/deletes partition counts differ"
    for compacted in (wire.TOPIC_MODEL, TOPIC_SUMMARIES):  # only the latest value per key matters
        line = next(line for line in script.splitlines() if f"--topic {compacted} " in line)
        assert "cleanup.policy=compact" in line, compacted
    assert "--if-not-exists" in script and "--replication-factor 1" in script
    assert "$$@" in script  # compose interpolation escaped
    worker_env = env(c["services"]["worker"])
    for var, topic in TOPICS.items():
        assert worker_env[var] == topic, var
    assert int(env(c["services"]["kafka"])["KAFKA_NUM_PARTITIONS"]) == int(created[wire.TOPIC_INSERTS])


def test_worker_env_matches_the_worker_flags():
    worker_env = env(compose()["services"]["worker"])
    assert all(k.startswith("STREAM_UNLEARN_") for k in worker_env)
    # the documented flags all have their variable set
    assert {env_name(f) for f in WORKER_FLAGS} <= set(worker_env)
    assert worker_env["STREAM_UNLEARN_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert worker_env["STREAM_UNLEARN_METRICS_ADDR"] == "0.0.0.0"
    assert int(worker_env["STREAM_UNLEARN_METRICS_PORT"]) == METRICS_PORT
    parser = subcommand("worker")
    if parser is None:
        pytest.skip("`stream-unlearn worker` does not exist yet: env names checked against the documented flags only")
    options = long_options(parser)
    missing = [f for f in WORKER_FLAGS if f not in options]
    assert not missing, f"documented worker flags missing from the parser: {missing}"
    unknown = set(worker_env) - {env_name(o) for o in options}
    assert not unknown, f"compose sets variables the worker does not read: {unknown}"
    assert worker_env["STREAM_UNLEARN_CREATE_TOPICS"] == "false"  # the topics service makes them
    from stream_unlearn.config import WorkerConfig

    assert WorkerConfig().metrics_port == METRICS_PORT


def test_demo_producer_uses_existing_produce_flags(tmp_path):
    script = PRODUCER_SH.read_text()
    subprocess.run(["sh", "-n", str(PRODUCER_SH)], check=True)
    produce = subcommand("produce")
    assert produce is not None
    cmd = re.search(r"^\s*stream-unlearn produce(.*?)\n\s*(?:if|round)", script, re.DOTALL | re.MULTILINE).group(1)
    flags = set(re.findall(r"(--[a-z][a-z-]*)", cmd))
    assert flags, cmd
    assert flags <= long_options(produce), flags - long_options(produce)
    # the data generator runs and writes files `produce` can load
    gen = re.search(r"<<'PY'\n(.*?)\nPY\n", script, re.DOTALL).group(1)
    subprocess.run([sys.executable, "-", "3", "200", str(tmp_path)], input=gen, text=True, check=True)
    from stream_unlearn.producer import load_ids, load_inserts

    ids, X = load_inserts(str(tmp_path / "x.npy"), str(tmp_path / "ids.txt"))
    assert X.shape == (200, 25) and len(ids) == 200
    deletes = load_ids(str(tmp_path / "deletes.txt"))
    assert 0 < len(deletes) < 200 and set(deletes) <= set(ids)
    c = compose()
    p = c["services"]["producer"]
    assert p["entrypoint"][-1] == "/opt/demo/demo-producer.sh"
    assert any(v.endswith(":/opt/demo/demo-producer.sh:ro") for v in p["volumes"])
    assert env(p)["INSERT_TOPIC"] == wire.TOPIC_INSERTS and env(p)["DELETE_TOPIC"] == wire.TOPIC_DELETES
    assert p["healthcheck"] == {"disable": True}  # the image's healthcheck probes the worker's loop


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_is_multi_stage_with_a_slim_final_image():
    stages = dockerfile_stages()[1:]
    assert len(stages) >= 2
    names = [n for n, _ in stages]
    assert "builder" in names
    base = final_stage()[0][1]
    base = re.sub(r"\$\{(\w+)\}", lambda m: global_args()[m.group(1)], base)
    assert base == "python:3.11-slim"
    builder = dict(stages)["builder"]
    assert any(i == "RUN" and "pip wheel" in a for i, a in builder)


def test_final_stage_has_no_build_tools_or_sources():
    final = final_stage()
    text = "\n".join(f"{i} {a}" for i, a in final)
    for tool in ("gcc", "build-essential", "g++", "make ", "apt-get install", "python3-dev", "git "):
        assert tool not in text, tool
    for instr, args in final:
        if instr in ("COPY", "ADD"):
            pytest.fail(f"final stage copies files in: {instr} {args}")
    (install,) = [a for i, a in final if i == "RUN" and "pip install" in a]
    assert "from=builder" in install and "--no-index" in install


def test_dockerfile_compiles_the_default_worker_kernels_at_build_time():
    """A cold numba cache costs a worker ~40 s of compiling at start; the image pays it once, for the
    defaults (a DC tree's path refit compiles per tree depth, which k sets)."""
    run = " ".join(a for i, a in final_stage() if i == "RUN")
    defaults = WorkerConfig()
    for algorithm in ("dc", "q"):
        assert f"warm_up({algorithm!r}, {defaults.k})" in run
    assert "NUMBA_CACHE_DIR=/home/unlearn/.cache/numba" in dict(final_stage())["ENV"]
    assert "chown -R unlearn:unlearn /home/unlearn/.cache" in run


def test_dockerfile_runs_as_a_non_root_user():
    users = [a for i, a in final_stage() if i == "USER"]
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    run = " ".join(a for i, a in final_stage() if i == "RUN")
    assert f"--uid {user}" in run


def test_dockerfile_entrypoint_healthcheck_volume_expose():
    final = final_stage()
    instrs = dict(final)  # last wins
    assert instrs["ENTRYPOINT"] == '["stream-unlearn"]'
    assert instrs["CMD"] == '["worker"]'
    hc = instrs["HEALTHCHECK"]
    assert "CMD" in hc and "python" in hc and "urllib.request" in hc and f"{HEALTH_PATH}'" in hc
    assert "STREAM_UNLEARN_METRICS_PORT" in hc and f"'{METRICS_PORT}'" in hc
    assert instrs["EXPOSE"].split() == [str(METRICS_PORT)]
    envs = dict(re.findall(r"(STREAM_UNLEARN_\w+)=(\S+)", instrs["ENV"]))
    assert envs["STREAM_UNLEARN_METRICS_PORT"] == str(METRICS_PORT)
    assert envs["STREAM_UNLEARN_METRICS_ADDR"] == "0.0.0.0"
    snap_dir = envs["STREAM_UNLEARN_SNAPSHOT_DIR"]
    assert instrs["VOLUME"] == f'["{snap_dir}"]'
    run = " ".join(a for i, a in final if i == "RUN")
    assert f"chown unlearn:unlearn {snap_dir}" in run and f"chmod 0700 {snap_dir}" in run
    # VOLUME after the chown, or the volume is initialised root-owned
    order = [i for i, _ in final]
    assert order.index("VOLUME") > max(k for k, i in enumerate(order) if i == "RUN")
    parser = subcommand("worker")
    if parser is not None:
        for env_var in envs:
            assert env_var in {env_name(o) for o in long_options(parser)}, env_var


# ---------------------------------------------------------------- Prometheus


def test_prometheus_scrapes_the_worker():
    cfg = yaml.safe_load(PROMETHEUS_YML.read_text())
    targets = [t for job in cfg["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert f"worker:{METRICS_PORT}" in targets
    c = compose()
    mounts = c["services"]["prometheus"]["volumes"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    assert "--config.file=/etc/prometheus/prometheus.yml" in c["services"]["prometheus"]["command"]


def test_promtool_check_config():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`; ./dev test installs it as root)")
    out = subprocess.run([promtool, "check", "config", str(PROMETHEUS_YML)], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stdout + out.stderr
