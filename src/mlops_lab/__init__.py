"""mlops-lab: an offline AWS MLOps lab.

Kept import-free on purpose: this package's ``inference`` module ships alone inside the Lambda layer.
"""

__version__ = "0.1.0"
