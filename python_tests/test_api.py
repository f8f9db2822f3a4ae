"""The public API reads like PyTorch: every public name is typed and documented (Args, Returns, an
Example that runs, a docs/ page), the examples run, and nothing cites the old spec's sections."""
import doctest
import importlib
import inspect
import os
import re

import pytest
import torch

import itr_kernels as ik
from itr_kernels import distributed, metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PUBLIC_MODULES = ["losses", "bcls", "modules", "embedding", "distributed", "metrics", "_ops"]


def public_objects():
    """(name, object) of every documented public function and class: itr_kernels.__all__ (less its
    submodules and type aliases), and the __all__ of distributed and metrics."""
    out = {}
    for mod, names in ((ik, ik.__all__), (distributed, distributed.__all__), (metrics, metrics.__all__)):
        for name in names:
            obj = getattr(mod, name)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                out[f"{mod.__name__}.{name}"] = obj
    return sorted(out.items())


PUBLIC = public_objects()


def test_the_public_list_is_complete():
    names = {n.rsplit(".", 1)[1] for n, _ in PUBLIC}
    assert {"EmbeddingLoss", "GlobalBatchLoss", "GlobalReduction", "gather_with_grad", "evaluate", "infonce_loss",
            "BCLSLoss", "build_info"} <= names
    assert len(PUBLIC) >= 30


def _signatures(obj):
    """The callables whose signatures are public: a function, or a class's __init__ and its
    forward / __call__."""
    if inspect.isfunction(obj):
        return [obj]
    out = [obj.__init__]
    for name in ("forward", "__call__"):
        if name in vars(obj) or any(name in vars(base) for base in obj.__mro__[1:-1] if base.__module__.startswith("itr_kernels")):
            out.append(getattr(obj, name))
    return out


@pytest.mark.parametrize("name,obj", PUBLIC, ids=[n for n, _ in PUBLIC])
def test_public_name_is_typed(name, obj):
    for fn in _signatures(obj):
        sig = inspect.signature(fn)
        for p in list(sig.parameters.values())[1 if fn.__name__ in ("__init__", "forward", "__call__") else 0:]:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            assert p.annotation is not p.empty, f"{name}: {fn.__qualname__}({p.name}) has no type hint"
        assert sig.return_annotation is not sig.empty, f"{name}: {fn.__qualname__} has no return type"


@pytest.mark.parametrize("name,obj", PUBLIC, ids=[n for n, _ in PUBLIC])
def test_public_name_has_a_torch_style_docstring(name, obj):
    doc = inspect.getdoc(obj) or ""
    fn = _signatures(obj)[0]
    params = [p for p in inspect.signature(fn).parameters if p != "self"]
    if params:
        assert "Args:" in doc, f"{name}: no Args section"
    for section in ("Returns:", "Example:", ">>> ", "docs/"):
        assert section in doc, f"{name}: no {section!r} in its docstring"
    # the Args section names every parameter of the signature it documents
    args_part = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    for p in params:
        assert re.search(rf"\b{p}\b", args_part), f"{name}: parameter {p!r} is not in its Args section"


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_docstring_examples_run(module):
    """What `pytest --doctest-modules` runs, for the public modules: every >>> example passes."""
    mod = importlib.import_module(f"itr_kernels.{module}")
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [t for t in finder.find(mod, globs=dict(vars(mod))) if t.examples]
    assert tests, f"itr_kernels.{module} has no docstring example"
    torch.manual_seed(0)
    for t in tests:
        runner.run(t)
    assert runner.failures == 0, f"{runner.failures} failing example(s) in itr_kernels.{module} (see the output)"


def test_nothing_cites_the_old_spec_sections():
    needle = re.compile(r"\b" + "SP" + r"EC\b")   # not spelled out: this file would match itself
    hits = []
    for top in ("itr_kernels", "csrc", "bench", "configs", "python_tests", "train.py"):
        path = os.path.join(ROOT, top)
        files = [path] if os.path.isfile(path) else [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
        for f in files:
            if f.endswith((".py", ".h", ".cpp", ".cu", ".yaml", ".md", ".sh")):
                with open(f, encoding="utf-8", errors="replace") as fh:
                    hits += [f"{os.path.relpath(f, ROOT)}:{i}" for i, line in enumerate(fh, 1) if needle.search(line)]
    assert not hits, "cites the spec instead of docs/: " + ", ".join(hits)
