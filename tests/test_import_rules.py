"""The package's dependency rules (docs: /DESIGN.md §2, §8), checked on its imports.

Every .py file under mgjax/ is parsed with `ast` (nothing is imported, so this needs
no jax and runs in well under a second). Every `import` / `from ... import` counts,
wherever it is (module level, inside a function, under `if TYPE_CHECKING`), relative
imports resolved, and so do `importlib.import_module("...")` / `__import__("...")`
calls with a literal name.

The rules:

  models-no-io      mgjax/models/ are pure Flax modules: they import no module that
                    reads files (checkpoint readers, torch, safetensors, glob, ...,
                    or the layers above them: data, tasks, text, trainer) and call no
                    file-I/O function (`open(`, `np.load(`, `os.path.exists(`,
                    `json.load(`, ...: Call nodes, so a docstring does not count).
  data-no-task      mgjax/data/ knows no task: nothing from mgjax.tasks, mgjax.train,
                    mgjax.sample.
  tasks-no-trainer  mgjax/tasks/ import no trainer: nothing from mgjax.train.
  kernels-no-model  mgjax/kernels/ and mgjax/parallel/ know no model: nothing from
                    mgjax.models, mgjax.tasks, mgjax.train.

All violations are reported at once, each as `path:line: [rule] what`.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = "mgjax"

# Modules that read or write files, or the layers of mgjax above the models (which
# read data, checkpoints and tokenizers). A models/ file importing any of them, or a
# submodule of one, breaks models-no-io.
FILE_READING_MODULES = (
    "glob",
    "pathlib",
    "shutil",
    "pickle",
    "shelve",
    "h5py",
    "safetensors",
    "torch",
    "transformers",
    "huggingface_hub",
    "tensorflow",
    "etils.epath",
    "orbax",
    "PIL",
    "av",
    "imageio",
    "soundfile",
    "mgjax.checkpoint",
    "mgjax.data",
    "mgjax.tasks",
    "mgjax.text",
    "mgjax.train",
    "mgjax.sample",
    "mgjax.inspect",
    "mgjax.aot",
    "mgjax.models.hf_checkpoint",
)

# File-I/O calls, by the canonical dotted name of the callee (aliases resolved:
# `np.load` is `numpy.load`). An entry ending in "." matches everything below it.
FILE_IO_CALLS = (
    "open",
    "io.open",
    "numpy.load",
    "numpy.save",
    "numpy.savez",
    "numpy.savez_compressed",
    "numpy.loadtxt",
    "numpy.savetxt",
    "numpy.genfromtxt",
    "numpy.fromfile",
    "numpy.memmap",
    "os.path.exists",
    "os.path.lexists",
    "os.path.isfile",
    "os.path.isdir",
    "os.path.islink",
    "os.path.getsize",
    "os.path.getmtime",
    "os.listdir",
    "os.scandir",
    "os.walk",
    "os.stat",
    "os.makedirs",
    "os.mkdir",
    "os.remove",
    "os.unlink",
    "os.rename",
    "os.replace",
    "json.load",
    "json.dump",
    "pickle.load",
    "pickle.dump",
    "torch.load",
    "torch.save",
    "glob.",
    "pathlib.",
    "shutil.",
    "safetensors.",
    "tensorflow.io.gfile.",
    "etils.epath.",
    "huggingface_hub.",
    "PIL.Image.open",
    "av.open",
)
# Methods that touch files whatever they are called on (pathlib / epath objects).
FILE_IO_METHODS = ("read_text", "read_bytes", "write_text", "write_bytes", "iterdir", "tofile")

# (rule, directories it governs, forbidden module prefixes).
IMPORT_RULES = (
    ("models-no-io", ("mgjax/models",), FILE_READING_MODULES),
    ("data-no-task", ("mgjax/data",), ("mgjax.tasks", "mgjax.train", "mgjax.sample")),
    ("tasks-no-trainer", ("mgjax/tasks",), ("mgjax.train",)),
    (
        "kernels-no-model",
        ("mgjax/kernels", "mgjax/parallel"),
        ("mgjax.models", "mgjax.tasks", "mgjax.train"),
    ),
)
IO_CALL_RULE = ("models-no-io", ("mgjax/models",))


@dataclasses.dataclass(frozen=True)
class Violation:
  path: str
  line: int
  rule: str
  what: str

  def __str__(self) -> str:
    return f"{self.path}:{self.line}: [{self.rule}] {self.what}"


def module_name(path: str) -> str:
  """'mgjax/models/t5.py' -> 'mgjax.models.t5'; a package's __init__ -> the package."""
  parts = list(pathlib.PurePosixPath(path).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _resolve_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
  """The absolute module a `from ... import` reads from (relative levels resolved)."""
  if not node.level:
    return node.module or ""
  package = module.split(".") if is_package else module.split(".")[:-1]
  base = package[: len(package) - (node.level - 1)]
  return ".".join(base + ([node.module] if node.module else []))


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
  """(line, absolute module) of every import anywhere in `tree`.

  `from a.b import c` yields both 'a.b' and 'a.b.c' (c may be a submodule), so
  `from mgjax import train` is seen as importing mgjax.train.
  """
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found += [(node.lineno, alias.name) for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      source = _resolve_from(node, module, is_package)
      found.append((node.lineno, source))
      found += [(node.lineno, f"{source}.{a.name}") for a in node.names if a.name != "*"]
    elif isinstance(node, ast.Call) and node.args:
      callee = _dotted(node.func)
      first = node.args[0]
      if (
          callee in ("importlib.import_module", "import_module", "__import__")
          and isinstance(first, ast.Constant)
          and isinstance(first.value, str)
      ):
        found.append((node.lineno, first.value))
  return found


def _matches(name: str, prefixes) -> str | None:
  """The first prefix `name` is, or is below ('a.b' matches 'a' and 'a.b', not 'ab')."""
  for prefix in prefixes:
    if prefix.endswith("."):
      if name.startswith(prefix):
        return prefix
    elif name == prefix or name.startswith(prefix + "."):
      return prefix
  return None


def _dotted(node: ast.AST) -> str:
  """'np.load' for the callee `np.load`; '' when it is not a plain dotted name."""
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  if not isinstance(node, ast.Name):
    return ""
  parts.append(node.id)
  return ".".join(reversed(parts))


def _aliases(tree: ast.AST, module: str, is_package: bool) -> dict[str, str]:
  """Local name -> the module or object it stands for (`np` -> 'numpy', `safe_open`
  -> 'safetensors.safe_open'), from every import in the file."""
  names = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.asname:
          names[a.asname] = a.name
        else:
          top = a.name.split(".")[0]
          names[top] = top
    elif isinstance(node, ast.ImportFrom):
      source = _resolve_from(node, module, is_package)
      for a in node.names:
        names[a.asname or a.name] = f"{source}.{a.name}"
  return names


def file_io_calls(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
  """(line, 'callee') of every call in `tree` that reads or writes a file."""
  names = _aliases(tree, module, is_package)
  found = []
  for node in ast.walk(tree):
    if not isinstance(node, ast.Call):
      continue
    written = _dotted(node.func)
    if written:
      head, _, rest = written.partition(".")
      canonical = names.get(head, head) + ("." + rest if rest else "")
      # `safe_open` however it was imported (safetensors or safetensors.torch).
      if _matches(canonical, FILE_IO_CALLS) or canonical.rpartition(".")[2] == "safe_open":
        found.append((node.lineno, f"{written}()" + (f" = {canonical}()" * (canonical != written))))
        continue
    if isinstance(node.func, ast.Attribute) and node.func.attr in FILE_IO_METHODS:
      found.append((node.lineno, f".{node.func.attr}()"))
  return found


def check_source(source: str, path: str) -> list[Violation]:
  """Every rule violation of the file `path` (repository-relative) holding `source`."""
  path = pathlib.PurePosixPath(path).as_posix()
  tree = ast.parse(source, filename=path)
  module = module_name(path)
  is_package = path.endswith("__init__.py")

  def governed(dirs) -> bool:
    return any(path.startswith(d + "/") for d in dirs)

  violations = []
  imports = imported_modules(tree, module, is_package)
  for rule, dirs, forbidden in IMPORT_RULES:
    if not governed(dirs):
      continue
    # One report per line and forbidden prefix, naming the most specific module.
    hits: dict[tuple[int, str], str] = {}
    for line, name in imports:
      prefix = _matches(name, forbidden)
      if prefix and len(name) > len(hits.get((line, prefix), "")):
        hits[line, prefix] = name
    for (line, prefix), name in hits.items():
      violations.append(Violation(path, line, rule, f"imports {name} (forbidden: {prefix})"))
  rule, dirs = IO_CALL_RULE
  if governed(dirs):
    for line, call in file_io_calls(tree, module, is_package):
      violations.append(Violation(path, line, rule, f"file I/O call {call}"))
  return sorted(violations, key=lambda v: (v.path, v.line, v.rule, v.what))


def check_package(root: pathlib.Path = REPO) -> list[Violation]:
  violations = []
  for file in sorted((root / PACKAGE).rglob("*.py")):
    relative = file.relative_to(root).as_posix()
    violations += check_source(file.read_text(encoding="utf-8"), relative)
  return violations


def _report(violations, rules) -> str:
  lines = [str(v) for v in violations if v.rule in rules]
  return f"{len(lines)} dependency-rule violation(s):\n" + "\n".join(lines)


# ------------------------------------------------------------------ the tree


@pytest.fixture(scope="module")
def package_violations() -> list[Violation]:
  return check_package()


def test_checker_sees_the_package():
  files = list((REPO / PACKAGE).rglob("*.py"))
  assert len(files) > 50, files
  for directory in ("models", "data", "tasks", "kernels", "parallel"):
    assert any(f"/{PACKAGE}/{directory}/" in f.as_posix() for f in files), directory


@pytest.mark.parametrize("rule", [r[0] for r in IMPORT_RULES])
def test_rule_holds(package_violations, rule):
  broken = [v for v in package_violations if v.rule == rule]
  if broken:
    pytest.fail(_report(broken, {rule}), pytrace=False)


# -------------------------------------------------------------- self-tests

SYNTHETIC_VIOLATIONS = [
    # (path, source, rule, a fragment of the message)
    (
        "mgjax/models/m.py",
        "from mgjax.text import hf_checkpoint\n",
        "models-no-io",
        "hf_checkpoint",
    ),
    ("mgjax/models/m.py", "def f():\n  import torch\n", "models-no-io", "torch"),
    ("mgjax/models/m.py", "from ..data import video\n", "models-no-io", "mgjax.data"),
    ("mgjax/models/m.py", "from . import hf_checkpoint\n", "models-no-io", "hf_checkpoint"),
    ("mgjax/models/m.py", "def f(p):\n  return open(p).read()\n", "models-no-io", "open()"),
    (
        "mgjax/models/m.py",
        "import numpy as np\nx = np.load('a.npz')\n",
        "models-no-io",
        "numpy.load",
    ),
    ("mgjax/models/m.py", "import numpy as onp\nonp.savez('a', x=1)\n", "models-no-io", "savez"),
    ("mgjax/models/m.py", "import os\nos.path.exists('a')\n", "models-no-io", "os.path.exists"),
    ("mgjax/models/m.py", "import os\nos.listdir('.')\n", "models-no-io", "os.listdir"),
    ("mgjax/models/m.py", "import json\njson.load(f)\n", "models-no-io", "json.load"),
    ("mgjax/models/m.py", "import glob as g\ng.glob('*')\n", "models-no-io", "glob"),
    ("mgjax/models/m.py", "p.read_text()\n", "models-no-io", ".read_text()"),
    (
        "mgjax/models/m.py",
        "from safetensors import safe_open\nsafe_open('a', 'np')\n",
        "models-no-io",
        "safe_open",
    ),
    ("mgjax/data/d.py", "from mgjax.tasks.t2v import T2VTask\n", "data-no-task", "mgjax.tasks"),
    ("mgjax/data/d.py", "def f():\n  from mgjax import train\n", "data-no-task", "mgjax.train"),
    ("mgjax/data/sub/d.py", "from ...sample import main\n", "data-no-task", "mgjax.sample"),
    (
        "mgjax/tasks/t.py",
        "def f():\n  from mgjax.train import train\n",
        "tasks-no-trainer",
        "train",
    ),
    ("mgjax/tasks/t.py", "from .. import train\n", "tasks-no-trainer", "mgjax.train"),
    (
        "mgjax/tasks/t.py",
        "import importlib\nimportlib.import_module('mgjax.train')\n",
        "tasks-no-trainer",
        "mgjax.train",
    ),
    ("mgjax/kernels/k.py", "from mgjax.models.layers import dense\n", "kernels-no-model", "models"),
    ("mgjax/kernels/a/__init__.py", "from ...models import dit\n", "kernels-no-model", "models"),
    ("mgjax/parallel/p.py", "import mgjax.tasks.base\n", "kernels-no-model", "mgjax.tasks"),
    ("mgjax/parallel/p.py", "def f():\n  import mgjax.train\n", "kernels-no-model", "mgjax.train"),
]


@pytest.mark.parametrize("path,source,rule,fragment", SYNTHETIC_VIOLATIONS)
def test_checker_catches(path, source, rule, fragment):
  violations = check_source(source, path)
  assert [v.rule for v in violations] and all(v.rule == rule for v in violations), violations
  assert any(fragment in v.what for v in violations), violations
  assert all(str(v).startswith(f"{path}:") for v in violations)


ALLOWED = [
    # Docstrings and comments mentioning I/O, pure string and array work, the
    # layers models may use, and rules applied only where they govern.
    (
        "mgjax/models/m.py",
        '"""Loads weights with open(path) and np.load(f); see hf_checkpoint."""\n'
        "import os\nimport json\nimport numpy as np\n"
        "from mgjax.models.layers import dense\nfrom mgjax.parallel.sharding import constrain\n"
        "from mgjax import flow\n"
        "x = json.loads('{}')\ny = os.path.join('a', 'b')\nz = np.asarray([1])\n"
        "s = 'open(x)'  # np.load(\n",
    ),
    ("mgjax/data/d.py", "from mgjax.data import video\nfrom mgjax.models import tae\n"),
    (
        "mgjax/tasks/t.py",
        "from mgjax.data.pipeline import DataIterator\nimport mgjax.trainer_util\n",
    ),
    ("mgjax/kernels/k.py", "from mgjax.kernels.attention import reference\nimport mgjax.modelsx\n"),
    ("mgjax/text/x.py", "import torch\nopen('a')\nfrom mgjax.train import train\n"),
    ("mgjax/sample.py", "from mgjax.train import train\n"),
]


@pytest.mark.parametrize("path,source", ALLOWED)
def test_checker_allows(path, source):
  assert check_source(source, path) == []


def test_checker_reports_every_violation_with_its_line():
  source = (
      "import torch\n"
      "def load(p):\n"
      "  with open(p) as f:\n"
      "    return f\n"
      "def more():\n"
      "  from mgjax.train import train\n"
  )
  found = [(v.line, v.rule) for v in check_source(source, "mgjax/models/m.py")]
  assert found == [(1, "models-no-io"), (3, "models-no-io"), (6, "models-no-io")], found


def test_checker_reads_a_package_tree(tmp_path):
  (tmp_path / PACKAGE / "data").mkdir(parents=True)
  (tmp_path / PACKAGE / "data" / "bad.py").write_text("x = 1\nfrom mgjax.tasks import t2v\n")
  (tmp_path / PACKAGE / "data" / "good.py").write_text("import numpy\n")
  assert [str(v) for v in check_package(tmp_path)] == [
      "mgjax/data/bad.py:2: [data-no-task] imports mgjax.tasks.t2v (forbidden: mgjax.tasks)"
  ]
