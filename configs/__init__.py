"""The shipped recipes. This folder is installed as the package ``resdense.configs`` (see ``package-dir`` in
pyproject.toml) so that :mod:`resdense.recipes` finds the YAML files through :mod:`importlib.resources` in a wheel,
a plain ``pip install`` and an editable install alike; the YAML files here are the only copy."""
