"""The institution side: local data, the local (inner) trainer, update encoding, the Flower
ClientApp. Imports ``step_model``, never ``coordinator``."""
