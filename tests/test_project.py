"""The project's own promises: pinned environments agree, every chapter is tested, the CLI is there."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "chapters").glob("*.ipynb"))


def pins(lines):
    found = {}
    for line in lines:
        match = re.match(r"^\s*(?:-\s+)?([A-Za-z0-9_.-]+)==([^\s#]+)", line)
        if match:
            found[match[1].lower().replace("_", "-")] = match[2]
    return found


def test_environment_yml_pins_the_same_versions_as_constraints():
    constraints = pins((ROOT / "constraints.txt").read_text().splitlines())
    conda = pins((ROOT / "environment.yml").read_text().splitlines())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    direct = project["dependencies"] + project["optional-dependencies"]["dev"]
    names = {re.match(r"[A-Za-z0-9_.-]+", d)[0].lower() for d in direct}
    assert names <= conda.keys(), f"environment.yml lacks {names - conda.keys()}"
    assert names <= constraints.keys(), f"constraints.txt lacks {names - constraints.keys()}"
    assert {n: conda[n] for n in conda} == {n: constraints[n] for n in conda}


def test_torch_is_the_pinned_cpu_release():
    assert pins((ROOT / "constraints.txt").read_text().splitlines())["torch"] == "2.13.0"


def test_every_chapter_is_collected_by_nbval():
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:xdist",
                          str(ROOT / "chapters")], capture_output=True, text=True, cwd=ROOT).stdout
    assert NOTEBOOKS, "no chapters found"
    for notebook in NOTEBOOKS:
        assert f"chapters/{notebook.name}::Cell 0" in out, f"{notebook.name} is not run by the test command"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_is_committed_clean_with_outputs(notebook):
    nb = json.loads(notebook.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c.get("outputs") for c in code if "NBVAL_CHECK_OUTPUT" in "".join(c["source"])), \
        "checked cells need their committed outputs"
    assert sum(bool(c.get("outputs")) for c in code) >= len(code) // 2, "committed without outputs"
    text = json.dumps([c.get("outputs", []) for c in code]) + json.dumps([c.get("metadata") for c in code])
    assert not re.search(r"/(work|tmp|root|home|Users)/[\w.-]+", text), "outputs hold a machine path"
    assert '"execution"' not in json.dumps([c.get("metadata") for c in code]), "cell timestamps committed"
    plain = [o.get("data", {}).get("text/plain", "") for c in code for o in c.get("outputs", [])]
    assert not [p for p in plain if re.search(r"(^|\s)0%\|", "".join(p))], "a progress bar saved unfinished"
    assert not [p for p in plain if "interactive(children=" in "".join(p)], "a widget's repr as its text fallback"
    sources = "".join("".join(c["source"]) for c in code)
    assert not re.search(r"minidiff\.course(\.solutions| import solutions)", sources), "a chapter imports the answers"
    text = json.dumps([c["source"] for c in nb["cells"]])
    assert not re.search(r"\\u00(0[0-8]|0b|0c|0e|0f|1[0-9a-f])", text), "a control character (an eaten backslash?)"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert "MINIDIFF_FAST" in json.dumps(nb) or "FAST" in json.dumps(nb)


def test_cli_lists_its_subcommands():
    out = subprocess.run([sys.executable, "-m", "minidiff", "--help"], capture_output=True, text=True).stdout
    for command in ("demo", "train", "ship", "sample", "generate", "evaluate", "data", "finetune"):
        assert re.search(rf"\b{command}\b", out)


def test_readme_starts_with_the_flagship_command_and_the_two_make_commands():
    head = (ROOT / "README.md").read_text().split("\n## ")[0]
    first = head.split("```")[1]  # the first code block: typing a sentence, in both languages
    assert 'python -m minidiff generate "a large red circle on a blue background, top left"' in first
    assert 'python -m minidiff generate "蓝色背景上的一个大红色圆形，左上角"' in first
    assert "make demo" in head and "make test" in head


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


LAYERS = {  # a module may import from its own layer and the ones below, never from above
    "files": 0, "registry": 0, "devices": 0, "__init__": 0,
    "datasets": 1, "diffusion": 1,
    "models": 2,
    "train": 3, "resume": 3, "weights": 3, "metrics": 3, "viz": 3, "latents": 3, "text2image": 3, "inpainting": 3,
    "edit_protocol": 3, "concept_protocol": 3,
    "course": 4,
    "__main__": 5,
}


def layer(module: str) -> int:
    """The layer of ``minidiff.<part>…``: by its subpackage, or by the top-level module's name."""
    return LAYERS[module.split(".")[1] if "." in module else "__init__"]


def test_imports_only_run_downwards_and_every_subpackage_init_is_empty():
    import ast
    package = ROOT / "minidiff"
    modules = sorted(package.rglob("*.py"))
    assert {p.relative_to(package).parts[0].removesuffix(".py") for p in modules} == set(LAYERS)
    for path in modules:
        name = "minidiff." + ".".join(path.relative_to(package).with_suffix("").parts)
        if path.name == "__init__.py":
            assert path.parent == package or not path.read_text().strip(), f"{path} is not empty"
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{name}: use absolute imports (from minidiff.… import …)"
                targets = [node.module] if node.module.split(".")[0] == "minidiff" else []
                if node.module == "minidiff":
                    targets = [f"minidiff.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names if alias.name.split(".")[0] == "minidiff"]
            else:
                continue
            for target in targets:
                assert layer(target) <= layer(name), f"{name} imports {target}, which sits above it"
