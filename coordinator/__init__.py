"""The consortium side: aggregation strategies, round state and checkpoints, the Flower
ServerApp. Imports ``step_model``, never ``node``."""
