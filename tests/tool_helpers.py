"""Load a script of tools/ (or benchmarks/) as a module, to call its ``main`` in-process (the
tests of the tools themselves)."""
import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_tool(name: str, folder: str = "tools"):
    """The module of ``<folder>/<name>.py``."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, folder, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
