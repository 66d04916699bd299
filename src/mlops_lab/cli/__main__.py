"""``python -m mlops_lab.cli``: the same command line as ``mlops-lab``."""

from mlops_lab.cli import app

app(prog_name="mlops-lab")
