"""Static checks of the Apptainer definitions (containers/*.def) and the conda envs (envs/*.yaml).

No apptainer is needed: the .def files are parsed with spython's SingularityParser
(``spython.main.parse.parsers.SingularityParser(path)``; ``.recipe`` maps a stage name to a
``Recipe`` with ``fromHeader``, ``files``, ``install`` (the %post lines, followed by the %test lines
rewritten as ``echo "LINE" >> /tests.sh``), ``environ``, ``labels``, ``test``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

parsers = pytest.importorskip("spython.main.parse.parsers")

ROOT = Path(__file__).resolve().parent.parent
CONTAINERS = ROOT / "containers"
ENVS = ROOT / "envs"

# Python packages every image installs, pinned with == (PyPI names, compared case-insensitively).
REQUIRED = [
    "snakemake",
    "numpy",
    "scikit-learn",
    "pandas",
    "pyarrow",
    "seaborn",
    "safetensors",
    "tqdm",
    "jsonschema",
    "pyyaml",
]
# Packages the rules' code imports, by import name: the %test of each image must import them.
IMPORTS = ["torch", "poisondetect"]

TEST_LINE = re.compile(r'^echo "(.*)" >> /tests\.sh$')
PIN = re.compile(r"(?i)(?<![\w.-])([a-z0-9][a-z0-9_.-]*)==([0-9][0-9a-z.+-]*)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class Def:
    """One parsed .def file: spython's recipe plus the raw sections."""

    def __init__(self, path: Path):
        self.path = path
        self.text = path.read_text()
        parser = parsers.SingularityParser(str(path))
        assert len(parser.recipe) == 1, f"{path.name}: expected a single-stage recipe"
        self.recipe = next(iter(parser.recipe.values()))
        self.post = [line for line in self.recipe.install if not _is_test_line(line)]
        self.test = [
            m.group(1) for line in self.recipe.install if (m := TEST_LINE.match(line)) is not None
        ]
        self.sections = _raw_sections(self.text)

    @property
    def image(self) -> str:
        return self.recipe.fromHeader.strip()

    @property
    def tag(self) -> str:
        name = self.image.split("@", 1)[0]
        return name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""

    def pins(self) -> dict[str, str]:
        """{normalised package name: version} of the `name==version` pins in %post."""
        return {_norm(n): v for n, v in PIN.findall("\n".join(self.post))}


def _is_test_line(line: str) -> bool:
    return bool(TEST_LINE.match(line)) or line == "chmod u+x /tests.sh"


def _raw_sections(text: str) -> dict[str, list[str]]:
    """{section name: non-empty lines} of a .def file, read without spython."""
    sections: dict[str, list[str]] = {"header": []}
    current = "header"
    for line in text.splitlines():
        m = re.match(r"^%(\w+)", line)
        if m:
            current = m.group(1).lower()
            sections.setdefault(current, [])
        elif line.strip():
            sections[current].append(line.strip())
    return sections


@pytest.fixture(scope="module", params=["gpu", "cpu"])
def definition(request) -> Def:
    path = CONTAINERS / f"{request.param}.def"
    assert path.is_file(), f"missing {path}"
    return Def(path)


@pytest.fixture(scope="module")
def gpu() -> Def:
    return Def(CONTAINERS / "gpu.def")


@pytest.fixture(scope="module")
def cpu() -> Def:
    return Def(CONTAINERS / "cpu.def")


def test_bootstrap_is_docker(definition):
    header = [line for line in definition.sections["header"] if not line.startswith("#")]
    assert header[0].lower().replace(" ", "") == "bootstrap:docker", header[:2]


def test_base_image_has_pinned_tag(definition):
    assert definition.image, "no From: line"
    assert definition.tag, f"{definition.path.name}: base image {definition.image!r} has no tag"
    assert definition.tag != "latest"
    # A pinned tag names an exact version: it contains a full x.y.z version.
    assert re.search(r"\d+\.\d+\.\d+", definition.tag), definition.tag


def test_gpu_image_is_a_cuda_base(gpu):
    assert gpu.image.startswith("pytorch/pytorch:"), gpu.image
    assert re.search(r"cuda\d+\.\d+", gpu.tag), gpu.tag
    assert "runtime" in gpu.tag, "use the (smaller) runtime flavour, not devel"


def test_cpu_image_is_slim_python_with_cpu_torch(cpu):
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", cpu.image), cpu.image
    post = "\n".join(cpu.post)
    assert "download.pytorch.org/whl/cpu" in post
    assert "torch" in cpu.pins()


@pytest.mark.parametrize("package", REQUIRED)
def test_post_installs_pinned_package(definition, package):
    pins = definition.pins()
    assert _norm(package) in pins, f"{definition.path.name}: %post does not pin {package}=="


def test_both_images_pin_the_same_versions(gpu, cpu):
    g, c = gpu.pins(), cpu.pins()
    shared = set(g) & set(c)
    assert set(map(_norm, REQUIRED)) <= shared
    assert {k: g[k] for k in shared} == {k: c[k] for k in shared}


def test_pins_match_requirements_txt(definition):
    req = ROOT / "requirements.txt"
    if not req.is_file():
        pytest.skip("no requirements.txt")
    wanted = {
        _norm(re.sub(r"\[.*\]", "", n)): v
        for n, v in re.findall(r"(?im)^([a-z0-9][a-z0-9_.\-\[\]]*)==(\S+)", req.read_text())
    }
    for name, version in definition.pins().items():
        if name in wanted:
            assert version.split("+")[0] == wanted[name], (
                f"{definition.path.name} pins {name}=={version}, requirements.txt {wanted[name]}"
            )


def test_project_package_is_copied_and_installed(definition):
    files = " ".join(definition.recipe.files)
    assert "poisondetect /opt/poisondetect/poisondetect" in files
    assert "pyproject.toml" in files
    assert any("pip install --no-deps /opt/poisondetect" in line for line in definition.post)
    # a regular install: no -e, and the source copy is gone afterwards (the installed copy runs)
    assert not any("pip install" in line and " -e " in line for line in definition.post)
    assert any(line.strip() == "rm -rf /opt/poisondetect" for line in definition.post)


def test_every_file_the_build_reads_is_copied(definition):
    """pyproject.toml names a readme and license files: the build fails without them."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    copied = {line.split()[0] for line in definition.recipe.files}
    for name in [project["readme"], *project["license-files"]]:
        assert name in copied, f"{definition.path.name}: %files does not copy {name}"


def test_test_section_checks_the_installed_package_data(definition):
    text = "\n".join(definition.test)
    assert "SCHEMA_PATH.is_file()" in text and "validate_config({})" in text
    assert "poisondetect --version" in text


def test_test_section_imports_torch_and_package(definition):
    assert definition.recipe.test, f"{definition.path.name}: no %test section"
    assert definition.test, "%test is empty"
    text = "\n".join(definition.test)
    for module in IMPORTS:
        assert re.search(rf"import [\w, ]*\b{module}\b", text), f"%test does not import {module}"
    # Snakemake runs a rule's script: with `python` inside the image.
    assert any(line.startswith("python ") for line in definition.test)


def test_environment_labels_help(definition):
    assert definition.recipe.environ, "no %environment"
    assert any(e.startswith("PYTHONNOUSERSITE=") for e in definition.recipe.environ)
    labels = dict(line.split(None, 1) for line in definition.recipe.labels)
    assert "org.opencontainers.image.title" in labels
    assert definition.sections.get("help"), "no %help"


def test_help_explains_driver_caveat(definition):
    help_text = " ".join(definition.sections["help"])
    assert "CUDA 13" in help_text and "driver" in help_text


# ---- conda environments ---------------------------------------------------------------------

CONDA_PIN = re.compile(r"^[A-Za-z0-9_.\-]+(\[[^\]]*\])?\s*(==|=)\s*[0-9][^\s]*$")
PIP_PIN = re.compile(r"^[A-Za-z0-9_.\-]+(\[[^\]]*\])?==[0-9][^\s;]*$")


def _env_files():
    return sorted(ENVS.glob("*.yaml")) + sorted(ENVS.glob("*.yml"))


@pytest.mark.parametrize("path", _env_files(), ids=lambda p: p.name)
def test_env_is_yaml_with_pinned_dependencies(path):
    env = yaml.safe_load(path.read_text())
    assert isinstance(env, dict), f"{path.name} is not a YAML mapping"
    assert env.get("channels"), f"{path.name}: no channels"
    deps = env.get("dependencies")
    assert deps, f"{path.name}: no dependencies"
    for dep in deps:
        if isinstance(dep, dict):
            assert set(dep) == {"pip"}, dep
            for item in dep["pip"]:
                if item.startswith("-"):  # pip options such as --extra-index-url
                    continue
                assert PIP_PIN.match(item), f"{path.name}: pip dependency {item!r} is not pinned"
        else:
            assert CONDA_PIN.match(dep), f"{path.name}: dependency {dep!r} is not pinned"


@pytest.mark.parametrize("name", ["gpu", "cpu"])
def test_env_pins_match_the_image(name):
    env = yaml.safe_load((ENVS / f"{name}.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    env_pins = {_norm(n): v for n, v in PIN.findall("\n".join(pip))}
    image_pins = Def(CONTAINERS / f"{name}.def").pins()
    assert "torch" in env_pins
    for package, version in env_pins.items():
        if package in image_pins:
            assert version.split("+")[0] == image_pins[package].split("+")[0], package
