"""The layout the README promises: `captioner` at the bottom knowing nothing of Flask, datasets or the
character model; `training` and `service` on it and never on each other; `charlm` beside them; no import
cycle anywhere (type-only and function-local imports count); small functions; test modules that share
helpers through conftest or helper modules, not through each other."""

import re

from .imports import ROOT, cycles, import_graph, long_functions, package_graph, project_modules

GRAPH = import_graph()
PRODUCT = ("captioner", "charlm", "training", "service")
MAX_FUNCTION_LINES = 60


def test_the_graph_is_read_from_the_source():
    assert "captioner.decoding" in GRAPH["captioner.model"]  # a plain relative import
    assert "captioner.fields" in GRAPH["training.config"]  # `from captioner import fields`: the submodule
    assert "captioner.rnn" in GRAPH["charlm.model"]


def test_the_cycle_finder_sees_type_only_and_function_local_imports(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n")
    (pkg / "b.py").write_text("def f():\n    from pkg import c\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from . import a\n")
    assert cycles(import_graph(tmp_path, ("pkg",))) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_no_import_cycle_anywhere():
    assert cycles(GRAPH) == []


def test_each_package_imports_only_the_layers_below_it():
    allowed = {"captioner": set(), "charlm": {"captioner"}, "training": {"captioner"}, "service": {"captioner"},
               "bench": {"captioner", "charlm", "training", "service", "tests"},
               "tests": {"captioner", "charlm", "training", "service"}}
    for package, imported in package_graph(GRAPH).items():
        assert imported <= allowed[package], f"{package} imports {sorted(imported - allowed[package])}"


def test_the_library_knows_nothing_of_the_web_datasets_or_the_character_model():
    outside = re.compile(r"^\s*(from|import)\s+(flask|gunicorn|pycocotools|pycocoevalcap|torchvision\.datasets)\b", re.M)
    for name, path in project_modules().items():
        if name.split(".")[0] == "captioner":
            text = path.read_text()
            assert not outside.search(text), name
            assert not re.search(r"charlm|character[- ]level|character model", text, re.I), name


def test_no_function_in_the_product_is_longer_than_a_screen():
    paths = [p for name, p in project_modules().items() if name.split(".")[0] in PRODUCT]
    assert long_functions(paths, MAX_FUNCTION_LINES) == []


def test_no_test_module_imports_another():
    for name, imported in GRAPH.items():
        if name.startswith("tests.test_"):
            assert not {m for m in imported if m.startswith("tests.test_")}, name


def test_the_serving_image_carries_the_library_and_the_service_only():
    copied = re.findall(r"^COPY\s+(?:--\S+\s+)?(\S+)", (ROOT / "docker" / "Dockerfile").read_text(), re.M)
    sources = {c.rstrip("/").split("/")[0] for c in copied if not c.startswith("/")}
    assert {"captioner", "service"} <= sources and not sources & {"charlm", "training", "bench", "tests"}
