"""Secrets in a configuration file are only ever references: `<name>_env: VARIABLE` or `<name>_file: PATH` (relative
to the file), for the client secret and the private key alike; written inline, they are refused."""

import os
from pathlib import Path
from typing import Any


def reference_read(item: dict[str, Any], name: str, where: str, base_dir: Path, problems: list[str]) -> str | None:
    """The secret `name` (client_secret, private_key) an entry refers to; None when it gives none (keep the stored
    one) or a problem was added."""
    env, file = f"{name}_env", f"{name}_file"
    if name in item:
        problems.append(
            f"{where}: {name} is written inline; secrets are only accepted by reference ({env}: NAME or {file}: PATH)."
        )
        return None
    if item.get(env) and item.get(file):
        problems.append(f"{where}: give {env} or {file}, not both.")
        return None
    if item.get(env):
        variable = str(item[env])
        if not os.environ.get(variable):
            problems.append(f"{where}: the environment variable {variable} ({env}) is not set or empty.")
            return None
        return os.environ[variable]
    if item.get(file):
        path = Path(str(item[file]))
        path = path if path.is_absolute() else base_dir / path
        try:
            secret = path.read_text().strip()
        except OSError as exc:
            problems.append(f"{where}: cannot read {file} {path} ({exc.strerror}).")
            return None
        if not secret:
            problems.append(f"{where}: {file} {path} is empty.")
            return None
        return secret
    return None


def variable_name(slug: str, name: str) -> str:
    """The environment variable an export refers to for a connection's secret: <SLUG>_CLIENT_SECRET and so on."""
    return f"{slug}_{name}".upper().replace("-", "_")
