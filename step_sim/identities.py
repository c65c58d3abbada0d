"""What secure aggregation needs of a simulated federation's institutions: an identity key per
institution and the roster of them signed with a federation key, as a deployment has from
`step-node init` and `step-coord enroll` (README "Secure aggregation").

All of it lives in the run folder: ``identities/<name>.key`` (0600), ``federation.key`` and
``federation.pub``, and ``roster.json``. A resumed run keeps the keys it has.
"""

from __future__ import annotations

from pathlib import Path

from step_common.fileio import atomic_write_json
from step_common.signatures import PRIVATE_KEY, PUBLIC_KEY, create_signing_key, load_signing_key
from step_fed.identity import NodeSigner, write_new_key
from step_fed.secagg.roster import ROSTER, signed_roster

FOLDER = "identities"


def key_file(run_dir: Path, name: str) -> Path:
    return run_dir / FOLDER / f"{name}.key"


def federation_public(run_dir: Path) -> Path:
    return run_dir / PUBLIC_KEY


def write_identities(run_dir: Path, names: list[str]) -> Path:
    """Each institution's identity key and the signed roster of them; the roster's path."""
    (run_dir / FOLDER).mkdir(parents=True, exist_ok=True)
    if not (run_dir / PRIVATE_KEY).is_file():
        create_signing_key(run_dir, "step-sim federation")
    lines = {}
    for name in names:
        path = key_file(run_dir, name)
        signer = NodeSigner(path) if path.is_file() else write_new_key(path)
        lines[name] = signer.public_line
    roster = run_dir / ROSTER
    atomic_write_json(roster, signed_roster(load_signing_key(run_dir / PRIVATE_KEY), 1, lines))
    return roster
