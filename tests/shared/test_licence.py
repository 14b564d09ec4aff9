"""The project is under the Apache License 2.0: the text at the root, the SPDX expression
in pyproject.toml, and the file in every build of the package (the image's too)."""

from __future__ import annotations

import hashlib
import tomllib

from devtools import REPO_ROOT

# the SHA-256 of https://www.apache.org/licenses/LICENSE-2.0.txt
APACHE_2_0_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


def test_the_licence_is_apache_2_0_everywhere_it_is_declared() -> None:
    """LICENSE is the Apache 2.0 text unchanged; pyproject says `Apache-2.0` and ships
    LICENSE; the Dockerfile copies it where the package is built."""
    text = (REPO_ROOT / "LICENSE").read_bytes()
    assert hashlib.sha256(text).hexdigest() == APACHE_2_0_SHA256
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    copies = [line.split()[1:-1] for line in (REPO_ROOT / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY pyproject.toml")]
    assert copies and "LICENSE" in copies[0]
