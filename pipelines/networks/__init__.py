"""The networks params `variants.<v>.model` may name: one module per network, named by its file
(`simple_cnn.py` is model `simple_cnn`), each with its nn.Module and `build(config)`.

Adding a network is adding a module here (and a params variant that uses it): params validation
allows its name (`network_names`), pipelines/models.py imports it, and `make deps` adds it to the
dvc.yaml stages that build models.
"""
from pathlib import Path


def network_names() -> list[str]:
    """The modules of this package, by name, read from the file names: validating params imports no
    network code."""
    return sorted(p.stem for p in Path(__file__).resolve().parent.glob("*.py") if not p.name.startswith("_"))
