"""Write docs/configuration.md from the ``Settings`` class (src/mlops_lab/settings.py): `make docs`.

One row per setting: its environment variable, its default and its description. The description is the field's
``description=``; a field without one falls back to its own comment (at the end of its line, or the comment lines right
above it); a field with neither stops the script, naming it. tests/test_docs.py fails when the page is not what this
script writes now, so a new setting cannot go undocumented.

    python scripts/config_doc.py            # rewrite docs/configuration.md
    python scripts/config_doc.py --check    # exit 1 if it is out of date
    python scripts/config_doc.py --stdout   # print the page instead
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import json
import sys
import tokenize
from pathlib import Path
from typing import Any

from annotated_types import Ge, Gt, Le, Lt
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from mlops_lab.settings import PROJECT_ROOT, Settings

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "configuration.md"

HEADER = """\
# Configuration

<!-- Generated from the Settings class in src/mlops_lab/settings.py by scripts/config_doc.py: change the class, then
run `make docs`. tests/test_docs.py fails when this page is out of date. -->

Every setting of the lab is an environment variable `LAB_<NAME>`, or a `LAB_<NAME>=value` line in a `.env` file in
the directory you run `mlops-lab` from; a variable in your shell wins over `.env`. The CLI, the API and the console
read them through the one `Settings` class (`src/mlops_lab/settings.py`), and `mlops-lab up` passes them on to the
services it starts. The Lambda reads only what bootstrap puts in its configuration: after changing a setting of the
function (`LAB_LAMBDA_*`, `LAB_MAX_INPUT_MB`, `LAB_CHUNK_ROWS`, `LAB_MODEL_KEY`, `LAB_LOG_RETENTION_DAYS`), run
`mlops-lab bootstrap` again. Write booleans as `true` or `false`.

How to reach AWS is not a lab setting. The SDK's own configuration decides it, as for the AWS CLI: `AWS_PROFILE` and
the profile's `endpoint_url`, `AWS_ENDPOINT_URL` and `AWS_ENDPOINT_URL_<SERVICE>`, `AWS_REGION` (else
`AWS_DEFAULT_REGION`, else the profile's), `AWS_CONFIG_FILE`, and credentials. The registry is mlflow's own
`MLFLOW_TRACKING_URI` when you set it (with `MLFLOW_TRACKING_USERNAME`/`PASSWORD` or `MLFLOW_TRACKING_TOKEN`, and
`MLFLOW_TRACKING_INSECURE_TLS`), else the embedded tracking server. See [Switching to real AWS](aws.md).

Docker compose reads a few variables of its own (`BASE_IMAGE`, `PIP_NO_INDEX`): see [Docker](docker.md). The test
suite reads `LAB_EXTERNAL_ALLOW_AWS`, `LAB_TEST_ARTIFACTS` and `LAB_TEST_CHROMIUM`; they are not settings of the lab:
see [Testing](testing.md).

`<prefix>` below is the value of `LAB_PREFIX`, `<state dir>` that of `LAB_STATE_DIR`, and `<checkout>` the
repository's root.

| variable | default | what it sets |
|---|---|---|
"""


class UndocumentedSetting(ValueError):
    """A setting with neither a description nor a comment of its own."""


def _comments(source: str) -> dict[int, str]:
    """Each comment of ``source`` by line number, without its ``#``."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {token.start[0]: token.string.lstrip("#").strip() for token in tokens if token.type == tokenize.COMMENT}


def _own_comments() -> dict[str, str]:
    """Each Settings field's own comment: at the end of its line(s), else the comment lines right above it."""
    try:
        source = inspect.getsource(sys.modules[Settings.__module__])
    except (KeyError, OSError, TypeError):  # no source to read: descriptions only
        return {}
    comments = _comments(source)
    lines = source.splitlines()
    found: dict[str, str] = {}
    classes = [node for node in ast.parse(source).body if isinstance(node, ast.ClassDef)]
    body = next((node.body for node in classes if node.name == Settings.__name__), [])
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        end = node.end_lineno or node.lineno
        trailing = [comments[n] for n in range(node.lineno, end + 1) if n in comments]
        above: list[str] = []
        line = node.lineno - 1
        while line in comments and lines[line - 1].lstrip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        text = " ".join(trailing or above)
        if text:
            found[node.target.id] = text[0].upper() + text[1:]
    return found


def variable(name: str, field: FieldInfo) -> str:
    alias = field.validation_alias
    if isinstance(alias, str):
        return alias.upper()
    return f"{Settings.model_config.get('env_prefix', '')}{name}".upper()


def default(field: FieldInfo) -> str:
    """The default as you would write it in the variable (paths in the checkout relative to it)."""
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if value is None or value in ({}, []):
        return "not set"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Path):
        value = f"<checkout>/{value.relative_to(PROJECT_ROOT)}" if value.is_relative_to(PROJECT_ROOT) else str(value)
    elif isinstance(value, dict | list):
        value = json.dumps(value)
    return f"`{value}`" if str(value) else '`""` (empty)'


def allowed(field: FieldInfo) -> str:
    """The field's declared bounds and pattern, in words."""
    low = high = None
    pattern = None
    for item in field.metadata:
        if isinstance(item, Ge | Gt):
            low = f"{item.ge} or more" if isinstance(item, Ge) else f"more than {item.gt}"
        elif isinstance(item, Le | Lt):
            high = f"{item.le} or less" if isinstance(item, Le) else f"less than {item.lt}"
        elif getattr(item, "pattern", None):
            pattern = item.pattern
    parts = []
    if low and high and low.endswith("or more") and high.endswith("or less"):
        parts.append(f"From {low.split()[0]} to {high.split()[0]}.")
    else:
        parts += [f"{bound[0].upper()}{bound[1:]}." for bound in (low, high) if bound]
    if pattern:
        parts.append(f"Matches `{pattern}`.")
    return " ".join(parts)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render() -> str:
    """The whole page, as docs/configuration.md must read."""
    comments = _own_comments()
    rows = []
    missing = []
    for name, field in Settings.model_fields.items():
        description = field.description or comments.get(name, "")
        if not description:
            missing.append(variable(name, field))
            continue
        what = " ".join(part for part in (description.strip(), allowed(field)) if part)
        rows.append(f"| `{variable(name, field)}` | {_cell(default(field))} | {_cell(what)} |")
    if missing:
        raise UndocumentedSetting(
            f"No description for {', '.join(missing)}: give the field a description= in src/mlops_lab/settings.py "
            "(or a comment at the end of its line), then run `make docs`."
        )
    return HEADER + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help=f"exit 1 if {PAGE.relative_to(ROOT)} is out of date")
    mode.add_argument("--stdout", action="store_true", help="print the page instead of writing it")
    args = parser.parse_args(argv)
    try:
        page = render()
    except UndocumentedSetting as error:
        print(error, file=sys.stderr)
        return 2
    if args.stdout:
        sys.stdout.write(page)
        return 0
    current = PAGE.read_text() if PAGE.exists() else None
    if args.check:
        if current != page:
            print(f"{PAGE.relative_to(ROOT)} is out of date: run `make docs`.", file=sys.stderr)
            return 1
        return 0
    if current == page:
        print(f"{PAGE.relative_to(ROOT)}: up to date.")
        return 0
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(page)
    print(f"Wrote {PAGE.relative_to(ROOT)} ({len(Settings.model_fields)} settings).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
