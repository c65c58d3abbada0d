"""What every STEP package shares: the user-error type, atomic file I/O, CLI helpers, and the
OpenSSH/Ed25519 signatures that name and sign keys, checkpoints and audit entries. Imports no
other STEP package, no torch, no Flower."""
